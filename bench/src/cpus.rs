//! The CPUs a benchmark pins its load generator and its servers to, and the CPU time
//! processes used.

/// This process's CPUs, split between a load generator and the servers under test.
#[derive(Debug, Clone)]
pub struct Cpus {
    /// The load generator's CPU (none: not pinned).
    pub loadgen: Option<String>,
    /// The servers' CPUs (none: not pinned).
    pub servers: Option<String>,
    /// How many CPUs the servers have.
    pub server_cores: usize,
}

// === impl Cpus ===

impl Cpus {
    /// The CPUs this process may use, split when `pin`: the first for the load generator,
    /// the others for the servers (with one CPU there is nothing to split).
    pub fn split(pin: bool) -> Cpus {
        let allowed: Vec<String> = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .map(cpu_list)
            })
            .unwrap_or_default();
        match allowed.split_first() {
            Some((first, rest)) if pin && !rest.is_empty() => Cpus {
                loadgen: Some(first.clone()),
                servers: Some(rest.join(",")),
                server_cores: rest.len(),
            },
            _ => Cpus {
                loadgen: None,
                servers: None,
                server_cores: allowed.len().max(1),
            },
        }
    }
}

/// `program`, under `taskset -c cpus` when given.
pub fn pinned(cpus: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    match cpus {
        Some(list) => {
            let mut cmd = std::process::Command::new("taskset");
            cmd.args(["-c", list]).arg(program);
            cmd
        }
        None => std::process::Command::new(program),
    }
}

/// "0-2,5" -> ["0", "1", "2", "5"].
pub fn cpu_list(list: &str) -> Vec<String> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(from), Ok(to)) = (from.parse::<u32>(), to.parse::<u32>()) {
            cpus.extend((from..=to).map(|c| c.to_string()));
        }
    }
    cpus
}

/// CPU seconds (user + system) `pids` have used; `None` once one is gone.
pub fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    pids.iter().try_fold(0.0, |sum, pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces); utime and stime are 14 and 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(sum + ticks / ticks_per_second)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_expand() {
        assert_eq!(cpu_list("0-2,5\n"), ["0", "1", "2", "5"]);
        assert_eq!(cpu_list("0"), ["0"]);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        assert!(cpu_seconds(&[std::process::id()]).is_some());
        assert!(Cpus::split(false).server_cores >= 1);
    }
}
