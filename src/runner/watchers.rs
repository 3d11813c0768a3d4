//! Sources of an abort: the panic flag file (checked every 100 ms, in every phase) and
//! SIGINT/SIGTERM. Each sets the abort reason the runner's guard waits on.

use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const PANIC_FLAG_POLL: Duration = Duration::from_millis(100);

pub fn spawn(panic_flag: Option<PathBuf>, abort: watch::Sender<Option<String>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let flag = async {
            match panic_flag {
                Some(path) => {
                    let mut tick = tokio::time::interval(PANIC_FLAG_POLL);
                    loop {
                        tick.tick().await;
                        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                            return format!("panic flag file {} appeared", path.display());
                        }
                    }
                }
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            why = flag => why,
            s = crate::signals::shutdown_requested() => match s {
                Ok(s) => format!("stopped by {s:?}"),
                Err(e) => format!("signal handling failed: {e}"),
            },
        };
        tracing::error!(reason = %reason, "aborting the run");
        abort.send_replace(Some(reason));
    })
}
