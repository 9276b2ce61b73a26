//! The seccomp filter every sandbox process runs under: a deny list of
//! system calls that reach outside the sandbox (mounts, modules, clocks,
//! keyrings, new user namespaces, ...), answered with EPERM.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Calls that are refused outright.
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_setns,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_quotactl,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_syslog,
    libc::SYS_vhangup,
    libc::SYS_lookup_dcookie,
];

fn arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}

/// The filters, installed in order: the deny list (EPERM), then clone3
/// answered with ENOSYS, which makes libcs fall back to clone (whose flags
/// the first filter can check; clone3 keeps them in memory).
pub fn filter() -> Result<Vec<BpfProgram>, seccompiler::Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|s| (*s, vec![])).collect();
    // No new user namespaces: unshare/clone with CLONE_NEWUSER.
    let newuser = libc::CLONE_NEWUSER as u64;
    let masked = |arg| {
        SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(newuser),
            newuser,
        )?])
    };
    rules.insert(libc::SYS_unshare, vec![masked(0)?]);
    rules.insert(libc::SYS_clone, vec![masked(0)?]);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch(),
    )?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )?;
    Ok(vec![
        deny.try_into().map_err(seccompiler::Error::Backend)?,
        clone3.try_into().map_err(seccompiler::Error::Backend)?,
    ])
}

/// Installs the filters on the calling thread (inherited across exec),
/// without setting no_new_privs: the sandbox's own setuid programs (`sudo`
/// for the template's `user`) must work, as they do in E2B's sandboxes. A
/// setuid program gains at most the sandbox root's capabilities (what the
/// bounding set kept, in the sandbox's user namespace), and files owned by
/// host ids outside the sandbox's range are never setuid there. Installing
/// a filter without no_new_privs needs `CAP_SYS_ADMIN` in the caller's
/// user namespace, which the init still has before it execs envd.
/// (seccompiler's `apply_filter` always sets no_new_privs first.)
pub fn apply(filters: &[BpfProgram]) -> std::io::Result<()> {
    for f in filters {
        let len = u16::try_from(f.len()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a seccomp filter longer than 65535 instructions",
            )
        })?;
        let prog = libc::sock_fprog {
            len,
            // seccompiler's `sock_filter` is `#[repr(C)]` with libc's
            // layout (u16, u8, u8, u32).
            filter: f.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `f`'s instructions, alive for the call;
        // the kernel copies the program before returning.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
