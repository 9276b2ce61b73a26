//! Building `EntryInfo` from the filesystem.

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use buffa_types::google::protobuf::Timestamp;
use wrenn_protocol::envd::filesystem::{EntryInfo, FileType};

use crate::users::Names;

/// `ls -l`-style permissions as Go's `FileMode.String()` prints them,
/// e.g. `-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`.
pub fn permissions_string(meta: &Metadata) -> String {
    let ft = meta.file_type();
    let mode = meta.permissions().mode();
    let mut s = String::with_capacity(10);
    s.push(if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'L'
    } else {
        '-'
    });
    for (bit, ch) in [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ] {
        s.push(if mode & bit != 0 { ch } else { '-' });
    }
    s
}

/// Describes `path` without following a final symlink; a symlink's type is
/// that of its target, with `is_symlink` and `symlink_target` set.
pub fn entry_info(path: &Path, names: &Names) -> std::io::Result<EntryInfo> {
    let meta = std::fs::symlink_metadata(path)?;
    Ok(entry_from_metadata(path, &meta, names))
}

/// Like [`entry_info`] for metadata already read.
pub fn entry_from_metadata(path: &Path, meta: &Metadata, names: &Names) -> EntryInfo {
    let is_symlink = meta.file_type().is_symlink();
    let (file_type, symlink_target) = if is_symlink {
        let target = std::fs::canonicalize(path).ok();
        let ty = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => FileType::FILE_TYPE_DIRECTORY,
            Ok(_) => FileType::FILE_TYPE_FILE,
            Err(_) => FileType::FILE_TYPE_SYMLINK,
        };
        let target = target.or_else(|| std::fs::read_link(path).ok());
        (ty, target.map(|t| t.display().to_string()))
    } else if meta.is_dir() {
        (FileType::FILE_TYPE_DIRECTORY, None)
    } else {
        (FileType::FILE_TYPE_FILE, None)
    };
    let mtime = Timestamp {
        seconds: meta.mtime(),
        nanos: meta.mtime_nsec() as i32,
        ..Default::default()
    };
    EntryInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        r#type: file_type.into(),
        path: path.display().to_string(),
        size: meta.size() as i64,
        mode: meta.permissions().mode() & 0o7777,
        permissions: permissions_string(meta),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        modified_time: mtime.into(),
        symlink_target,
        is_symlink,
        metadata: super::metadata::read(path).into_iter().collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_files_dirs_and_symlinks() {
        let dir = std::env::temp_dir().join(format!("envd-entry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f.txt");
        std::fs::write(&file, b"hello").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.join("l");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let names = Names::load();

        let f = entry_info(&file, &names).unwrap();
        assert_eq!((f.name.as_str(), f.size, f.mode), ("f.txt", 5, 0o640));
        assert_eq!(f.permissions, "-rw-r-----");
        assert_eq!(f.r#type.as_known(), Some(FileType::FILE_TYPE_FILE));
        assert!(f.modified_time.as_option().is_some_and(|t| t.seconds > 0));

        let d = entry_info(&dir, &names).unwrap();
        assert_eq!(d.r#type.as_known(), Some(FileType::FILE_TYPE_DIRECTORY));
        assert!(d.permissions.starts_with('d'));

        let l = entry_info(&link, &names).unwrap();
        assert!(l.is_symlink);
        assert_eq!(l.r#type.as_known(), Some(FileType::FILE_TYPE_FILE));
        assert_eq!(l.symlink_target.as_deref(), Some(file.to_str().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
