//! The free-space floor: the store refuses writes when its file system has less free space
//! than the host keeps (`--storage-min-free`), so that a full bucket cannot fill the disk the
//! agent, its index and the host's other workloads share. Reads and deletes go on.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::{Result, StorageError, io_err};

/// Free space the store keeps on its file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FreeSpaceFloor {
    /// No floor: writes go on until the disk is full.
    #[default]
    None,
    /// This many bytes.
    Bytes(u64),
    /// This percentage (1 to 99) of the file system's size.
    Percent(u8),
}

/// What `statvfs` says of a file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Space {
    /// Free to unprivileged writers (`f_bavail`).
    pub free: u64,
    /// The file system's size.
    pub size: u64,
}

// === impl FreeSpaceFloor ===

impl FreeSpaceFloor {
    /// The floor in bytes on a file system of `size` bytes.
    pub(super) fn bytes(self, size: u64) -> u64 {
        match self {
            FreeSpaceFloor::None => 0,
            FreeSpaceFloor::Bytes(b) => b,
            FreeSpaceFloor::Percent(p) => size / 100 * u64::from(p),
        }
    }

    /// Refuses a write of `needed` bytes (if declared) that would leave less than the floor.
    pub(super) fn check(self, space: Space, needed: Option<u64>) -> Result<()> {
        let floor = self.bytes(space.size);
        if floor == 0 {
            return Ok(());
        }
        if space.free.saturating_sub(needed.unwrap_or(0)) < floor {
            return Err(StorageError::InsufficientStorage {
                floor,
                free: space.free,
                needed,
            });
        }
        Ok(())
    }
}

impl FromStr for FreeSpaceFloor {
    type Err = String;

    /// `0` (none), a quantity of bytes (`1Gi`, `500M`) or a percentage of the file system
    /// (`5%`).
    fn from_str(text: &str) -> Result<FreeSpaceFloor, String> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            return match percent.trim().parse::<u8>() {
                Ok(0) => Ok(FreeSpaceFloor::None),
                Ok(p @ 1..=99) => Ok(FreeSpaceFloor::Percent(p)),
                _ => Err(format!(
                    "{text:?}: a percentage of the file system is 0% to 99%"
                )),
            };
        }
        match keel_schemas::parse_quantity(text).map(u64::try_from) {
            Some(Ok(0)) => Ok(FreeSpaceFloor::None),
            Some(Ok(b)) => Ok(FreeSpaceFloor::Bytes(b)),
            _ => Err(format!(
                "{text:?}: give bytes (1Gi, 500M, 0 for none) or a percentage (5%)"
            )),
        }
    }
}

impl fmt::Display for FreeSpaceFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeSpaceFloor::None => f.write_str("0"),
            FreeSpaceFloor::Bytes(b) => write!(f, "{b}"),
            FreeSpaceFloor::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The free space and size of the file system holding `path`.
pub(super) fn space(path: &Path) -> Result<Space> {
    let stat = nix::sys::statvfs::statvfs(path)
        .map_err(|e| io_err("statvfs", path)(std::io::Error::from(e)))?;
    let unit = stat.fragment_size();
    Ok(Space {
        free: stat.blocks_available().saturating_mul(unit),
        size: stat.blocks().saturating_mul(unit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_parse_and_refuse_what_would_cross_them() {
        assert_eq!("1Gi".parse(), Ok(FreeSpaceFloor::Bytes(1 << 30)));
        assert_eq!("5%".parse(), Ok(FreeSpaceFloor::Percent(5)));
        assert_eq!("0".parse(), Ok(FreeSpaceFloor::None));
        assert_eq!("0%".parse(), Ok(FreeSpaceFloor::None));
        for bad in ["100%", "-1", "1GB", "", "x%"] {
            assert!(bad.parse::<FreeSpaceFloor>().is_err(), "{bad}");
        }
        let space = Space {
            free: 1_000,
            size: 10_000,
        };
        assert_eq!(FreeSpaceFloor::Percent(5).bytes(space.size), 500);
        assert!(FreeSpaceFloor::Percent(5).check(space, Some(500)).is_ok());
        let refused = FreeSpaceFloor::Percent(5).check(space, Some(501));
        assert!(
            matches!(
                refused,
                Err(StorageError::InsufficientStorage {
                    floor: 500,
                    free: 1_000,
                    needed: Some(501)
                })
            ),
            "{refused:?}"
        );
        assert!(FreeSpaceFloor::Bytes(1_001).check(space, None).is_err());
        assert!(FreeSpaceFloor::None.check(space, Some(u64::MAX)).is_ok());
    }
}
