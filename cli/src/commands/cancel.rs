//! Ctrl-C: cancels the running operation through its [`CancelToken`].
//!
//! The first long operation installs a SIGINT listener (a thread with a small tokio
//! runtime). While an operation holds a [`Cancellable`], Ctrl-C cancels its token: the
//! core stops at the next step or token (a training job writes a checkpoint and ends
//! `cancelled`, resumable). A second Ctrl-C, or one while nothing cancellable runs,
//! ends the process with exit code 130.

use std::sync::{Mutex, OnceLock};

use anneal::CancelToken;

static CURRENT: Mutex<Option<CancelToken>> = Mutex::new(None);
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// The token of the operation in progress; Ctrl-C cancels it until this is dropped.
pub(crate) struct Cancellable {
    token: CancelToken,
}

impl Cancellable {
    pub fn new() -> Self {
        install();
        let token = CancelToken::new();
        if let Ok(mut cur) = CURRENT.lock() {
            *cur = Some(token.clone());
        }
        Cancellable { token }
    }

    pub fn token(&self) -> &CancelToken {
        &self.token
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

impl Drop for Cancellable {
    fn drop(&mut self) {
        if let Ok(mut cur) = CURRENT.lock() {
            *cur = None;
        }
    }
}

fn on_interrupt() {
    let token = CURRENT.lock().ok().and_then(|c| c.clone());
    match token {
        Some(t) if !t.is_cancelled() => {
            eprintln!("\ninterrupt: cancelling (Ctrl-C again to quit at once)");
            t.cancel();
        }
        _ => std::process::exit(130),
    }
}

fn install() {
    INSTALLED.get_or_init(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("anneal-ctrl-c".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(_) => {
                    let _ = ready_tx.send(false);
                    return;
                }
            };
            rt.block_on(async move {
                // Register the handler before the operation starts, then wait.
                #[cfg(unix)]
                let sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
                #[cfg(windows)]
                let sig = tokio::signal::windows::ctrl_c();
                let mut sig = match sig {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ready_tx.send(false);
                        return;
                    }
                };
                let _ = ready_tx.send(true);
                while sig.recv().await.is_some() {
                    on_interrupt();
                }
            });
        });
        spawned.is_ok() && ready_rx.recv().unwrap_or(false)
    });
}
