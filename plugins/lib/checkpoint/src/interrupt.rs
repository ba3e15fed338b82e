//! Temporary files are removed when the run is interrupted (SIGINT, SIGTERM) while it writes
//! them, and the process then dies of the signal as it would have without this module.
//!
//! Writers register each temporary path ([`TempPath`]) before they create it and drop the
//! registration once the file is renamed into place or removed. The signal handler only does
//! what is safe in a handler: it reads the registered paths from a fixed table of atomics and
//! `unlink`s them, restores the default action and raises the signal again. A writer that renames
//! several files into place marks that step with [`commit`], during which a signal is held back
//! until the renames are done, so that a folder never holds half of the new files and half of
//! the old ones because of a Ctrl-C. SIGKILL cannot be caught: what it leaves is removed by the
//! next save into the same folder (see [`crate::save::remove_stale_temps`]).

use std::ffi::{c_char, CString};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
use std::sync::Once;

/// How many temporary files can be registered at once (a save registers one per file it
/// writes; more are simply not removed on a signal, and the next save collects them).
const SLOTS: usize = 256;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicPtr<c_char> = AtomicPtr::new(ptr::null_mut());
static PATHS: [AtomicPtr<c_char>; SLOTS] = [EMPTY; SLOTS];
/// Set while registered files are being renamed into place.
static COMMITTING: AtomicBool = AtomicBool::new(false);
/// A signal that arrived during a commit, to act on when it ends (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);
static INSTALL: Once = Once::new();

/// A registered temporary path: removed by the signal handler while registered.
pub struct TempPath {
    slot: Option<usize>,
}

impl TempPath {
    /// Register `path` (call before creating the file).
    pub fn register(path: &Path) -> TempPath {
        install();
        let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
            return TempPath { slot: None };
        };
        // Leaked on purpose: the handler may be reading a path while the writer drops its
        // registration, so a path's memory must stay valid for the life of the process. A save
        // registers one short path per file it writes.
        let raw = c.into_raw();
        for (i, slot) in PATHS.iter().enumerate() {
            if slot
                .compare_exchange(ptr::null_mut(), raw, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return TempPath { slot: Some(i) };
            }
        }
        tracing::debug!(
            path = %path.display(),
            "too many temporary files to remove on a signal; the next save will"
        );
        TempPath { slot: None }
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            PATHS[i].store(ptr::null_mut(), Ordering::SeqCst);
        }
    }
}

/// Run `f` (renames of registered files into place) with SIGINT and SIGTERM held back: one
/// that arrives meanwhile takes effect when `f` returns.
pub fn commit<T>(f: impl FnOnce() -> T) -> T {
    install();
    COMMITTING.store(true, Ordering::SeqCst);
    let out = f();
    COMMITTING.store(false, Ordering::SeqCst);
    let sig = PENDING.swap(0, Ordering::SeqCst);
    if sig != 0 {
        remove_and_raise(sig);
        // Still alive only where the signal cannot end the process.
        std::process::exit(128 + sig);
    }
    out
}

fn install() {
    INSTALL.call_once(|| {
        #[cfg(unix)]
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: installs a handler that only touches atomics and async-signal-safe calls.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut action.sa_mask);
                action.sa_flags = libc::SA_RESTART;
                // A signal the user set to be ignored (nohup) stays ignored.
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, ptr::null(), &mut old);
                if old.sa_sigaction != libc::SIG_IGN {
                    libc::sigaction(sig, &action, ptr::null_mut());
                }
            }
        }
    });
}

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    PENDING.store(sig, Ordering::SeqCst);
    if COMMITTING.load(Ordering::SeqCst) {
        return;
    }
    let sig = PENDING.swap(0, Ordering::SeqCst);
    if sig != 0 {
        // The signal is blocked while its handler runs: raised again, it ends the process as
        // soon as the handler returns.
        remove_and_raise(sig);
    }
}

/// Remove every registered file, restore the default action of `sig` and raise it
/// (async-signal-safe).
fn remove_and_raise(sig: i32) {
    for slot in &PATHS {
        let p = slot.swap(ptr::null_mut(), Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: `p` is a leaked, NUL-terminated CString that is never freed.
            #[cfg(unix)]
            unsafe {
                libc::unlink(p);
            }
        }
    }
    #[cfg(unix)]
    // SAFETY: plain async-signal-safe calls; with the default action restored, raising the
    // signal ends the process as the signal would have.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}
