//! Crash recovery at open: whatever the index does not reference is a write that never
//! committed (or a file a commit released but did not get to remove), and goes.
//!
//! It runs before the store serves anything and while the store holds the index open
//! (redb locks the file), so no write is in flight and every unreferenced file is garbage.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use redb::ReadableTable;

use super::index::{PARTS, PartRecord, UPLOADS, VERSIONS, VersionRecord, decode, index};
use super::multipart::{all_uploads, is_upload_id};
use super::{Inner, Result, io_err};

/// What recovery removed.
#[derive(Debug, Default)]
struct Removed {
    data: usize,
    parts: usize,
    uploads: usize,
}

pub(super) fn recover(inner: &Inner) -> Result<()> {
    let mut removed = Removed::default();
    let missing = recover_data(inner, &mut removed)?;
    recover_uploads(inner, &mut removed)?;
    if missing > 0 {
        tracing::error!(
            missing,
            dir = %inner.data.display(),
            "data files the index references are missing: those objects cannot be read"
        );
    }
    if removed.data + removed.parts + removed.uploads > 0 {
        tracing::info!(
            data_files = removed.data,
            part_files = removed.parts,
            uploads = removed.uploads,
            "removed what interrupted writes left behind"
        );
    }
    Ok(())
}

/// Removes the data files no version references; returns how many referenced ones are
/// missing.
fn recover_data(inner: &Inner, removed: &mut Removed) -> Result<usize> {
    let mut on_disk: HashMap<String, PathBuf> = files_of(&inner.data)?.into_iter().collect();
    let mut missing = 0;
    let rtx = inner.read()?;
    let versions = rtx.open_table(VERSIONS).map_err(index("open versions"))?;
    for entry in versions
        .range::<(&[u8], u64)>(..)
        .map_err(index("scan versions"))?
    {
        let (_, v) = entry.map_err(index("scan versions"))?;
        let record: VersionRecord = decode(v.value(), "version")?;
        if let Some(file) = record.file
            && on_disk.remove(&file).is_none()
        {
            missing += 1;
        }
    }
    for path in on_disk.into_values() {
        remove(&path, &mut removed.data);
    }
    Ok(missing)
}

/// Removes the directories of uploads the index does not know, and the part files no part
/// references.
fn recover_uploads(inner: &Inner, removed: &mut Removed) -> Result<()> {
    let rtx = inner.read()?;
    let uploads = all_uploads(&rtx.open_table(UPLOADS).map_err(index("open uploads"))?)?;
    let parts = rtx.open_table(PARTS).map_err(index("open parts"))?;
    let entries = std::fs::read_dir(&inner.uploads).map_err(io_err("read", &inner.uploads))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read", &inner.uploads))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_upload_id(&name) || !uploads.contains_key(&name) || !path.is_dir() {
            if path.is_dir() {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => removed.uploads += 1,
                    Err(e) => warn_remove(&path, &e),
                }
            } else {
                remove(&path, &mut removed.parts);
            }
            continue;
        }
        let referenced = part_files(&parts, &name)?;
        for (file, file_path) in files_of(&path)? {
            if !referenced.contains(&file) {
                remove(&file_path, &mut removed.parts);
            }
        }
    }
    Ok(())
}

/// The files the parts of an upload reference.
fn part_files(
    parts: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    upload_id: &str,
) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    for entry in parts
        .range::<(&str, u32)>((upload_id, 0)..=(upload_id, u32::MAX))
        .map_err(index("scan parts"))?
    {
        let (_, v) = entry.map_err(index("scan parts"))?;
        let record: PartRecord = decode(v.value(), "part")?;
        out.insert(record.file);
    }
    Ok(out)
}

/// The entries of a directory: name (lossy) and path.
fn files_of(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("read", dir))? {
        let entry = entry.map_err(io_err("read", dir))?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    Ok(out)
}

fn remove(path: &Path, count: &mut usize) {
    match std::fs::remove_file(path) {
        Ok(()) => *count += 1,
        Err(e) => warn_remove(path, &e),
    }
}

fn warn_remove(path: &Path, e: &io::Error) {
    tracing::warn!(path = %path.display(), error = %e, "cannot remove what an interrupted write left");
}
