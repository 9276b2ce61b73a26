//! Users and groups of the system envd runs in, read from `/etc/passwd` and
//! `/etc/group`.
//!
//! envd runs inside foreign root filesystems and may be linked statically, so
//! it reads the files itself instead of going through NSS.

use std::collections::HashMap;
use std::path::PathBuf;

/// A user that processes can run as and files can belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
    /// Supplementary group ids (from `/etc/group`), the primary one first.
    pub groups: Vec<u32>,
}

/// Errors from user look-ups.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No such user in `/etc/passwd`.
    #[error("user '{0}' does not exist in this sandbox; create it (useradd) or pick another user")]
    Unknown(String),
}

fn passwd_path() -> &'static str {
    "/etc/passwd"
}

fn group_path() -> &'static str {
    "/etc/group"
}

/// Parses one `/etc/passwd` line into (name, uid, gid, home).
fn parse_passwd_line(line: &str) -> Option<(&str, u32, u32, &str)> {
    let mut f = line.split(':');
    let name = f.next()?;
    let _pw = f.next()?;
    let uid = f.next()?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    let _gecos = f.next()?;
    let home = f.next()?;
    if name.is_empty() || name.starts_with('#') {
        return None;
    }
    Some((name, uid, gid, home))
}

/// Parses one `/etc/group` line into (name, gid, members).
fn parse_group_line(line: &str) -> Option<(&str, u32, Vec<&str>)> {
    let mut f = line.split(':');
    let name = f.next()?;
    let _pw = f.next()?;
    let gid = f.next()?.parse().ok()?;
    let members = f
        .next()
        .unwrap_or("")
        .split(',')
        .filter(|m| !m.is_empty())
        .collect();
    Some((name, gid, members))
}

/// Looks a user up by login name, or by numeric uid when `name` is a number.
pub fn lookup(name: &str) -> Result<User, UserError> {
    let passwd = std::fs::read_to_string(passwd_path()).unwrap_or_default();
    let by_uid: Option<u32> = name.parse().ok();
    let found = passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|(n, uid, _, _)| *n == name || by_uid == Some(*uid));
    let Some((name, uid, gid, home)) = found else {
        return Err(UserError::Unknown(name.to_string()));
    };
    let groups_file = std::fs::read_to_string(group_path()).unwrap_or_default();
    let mut groups = vec![gid];
    for (_, g, members) in groups_file.lines().filter_map(parse_group_line) {
        if members.contains(&name) && !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(User {
        name: name.to_string(),
        uid,
        gid,
        home: PathBuf::from(home),
        groups,
    })
}

/// Looks up the user envd itself runs as; falls back to a synthetic entry
/// when `/etc/passwd` does not list it.
pub fn current() -> User {
    let uid = rustix::process::getuid().as_raw();
    lookup(&uid.to_string()).unwrap_or_else(|_| User {
        name: uid.to_string(),
        uid,
        gid: rustix::process::getgid().as_raw(),
        home: PathBuf::from("/"),
        groups: vec![],
    })
}

/// Maps uids and gids to names, loaded once per request.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// Reads `/etc/passwd` and `/etc/group`.
    pub fn load() -> Self {
        let passwd = std::fs::read_to_string(passwd_path()).unwrap_or_default();
        let group = std::fs::read_to_string(group_path()).unwrap_or_default();
        let mut names = Names::default();
        for (n, uid, _, _) in passwd.lines().filter_map(parse_passwd_line) {
            names.users.entry(uid).or_insert_with(|| n.to_string());
        }
        for (n, gid, _) in group.lines().filter_map(parse_group_line) {
            names.groups.entry(gid).or_insert_with(|| n.to_string());
        }
        names
    }

    /// The name of `uid`, or the number when it has none.
    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    /// The name of `gid`, or the number when it has none.
    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_group_lines() {
        let cases = [
            (
                "root:x:0:0:root:/root:/bin/bash",
                Some(("root", 0, 0, "/root")),
            ),
            (
                "user:x:1000:1000::/home/user:/bin/sh",
                Some(("user", 1000, 1000, "/home/user")),
            ),
            ("broken:x:abc:0::/:/bin/sh", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_passwd_line(line), want, "line {line:?}");
        }
        assert_eq!(
            parse_group_line("docker:x:999:alice,bob"),
            Some(("docker", 999, vec!["alice", "bob"]))
        );
        assert_eq!(parse_group_line("empty:x:5:"), Some(("empty", 5, vec![])));
    }

    #[test]
    fn looks_up_root_by_name_and_uid() {
        let root = lookup("root").expect("root exists");
        assert_eq!(root.uid, 0);
        assert_eq!(lookup("0").expect("uid 0").name, "root");
        assert!(matches!(
            lookup("no-such-user-xyz"),
            Err(UserError::Unknown(_))
        ));
    }
}
