//! What a DBA steers a run with, gathered for the runner: the hot-tunable settings, the
//! throttler's inputs and decision, the control socket and its events, the hooks, and the
//! progress snapshot that the status line, the socket and the hooks read.

use crate::config::{Config, Tunables};
use crate::control::{ControlContext, ControlEvent, ControlHandle, ControlServer, CoordinatesSource, TableGuard, ThrottleOverride};
use crate::copy::CopyProgress;
use crate::error::Result;
use crate::hooks::{self, HookEnv, HookEvent, Hooks};
use crate::names::Names;
use crate::phase::Phase;
use crate::sql::QualifiedName;
use crate::status::Progress;
use crate::throttle::Override;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

pub struct Controls {
    pub hooks: Arc<dyn Hooks>,
    /// What the hooks are told; completed as the run learns more.
    pub env: Arc<Mutex<HookEnv>>,
    tunables_tx: Option<watch::Sender<Tunables>>,
    pub tunables: watch::Receiver<Tunables>,
    overrides_tx: Arc<watch::Sender<Override>>,
    pub overrides: watch::Receiver<Override>,
    pub cut_over_locked: watch::Sender<bool>,
    /// `unpostpone` from the socket.
    pub unpostpone: Arc<Notify>,
    /// `revert` (true) or `finalize` (false) from the socket, in the revert window.
    pub window: Arc<watch::Sender<Option<bool>>>,
    pub progress: watch::Sender<Progress>,
    /// Asks the status task for a fresh progress snapshot (hooks must not see a stale one).
    pub refresh: Arc<Notify>,
    /// Whether a status task answers `refresh`.
    pub refreshing: bool,
    server: Option<ControlHandle>,
    tasks: Vec<JoinHandle<()>>,
}

impl Controls {
    pub fn new(cfg: &Config) -> Result<Controls> {
        let hooks: Arc<dyn Hooks> = Arc::new(OneAtATime { inner: hooks::from_config(&cfg.hooks)?, lock: tokio::sync::Mutex::new(()) });
        let mut env = HookEnv::new(&cfg.conn.dbname, &cfg.table, &cfg.alter, !cfg.execute || cfg.test_on_replica.is_some());
        if let Some(c) = &cfg.conversion {
            env = env.with_conversion(&c.partition_by, c.partitions.len());
        }
        let (tunables_tx, tunables) = watch::channel(cfg.tunables.clone());
        let (overrides_tx, overrides) = watch::channel(Override::None);
        let (cut_over_locked, _) = watch::channel(false);
        let (progress, _) = watch::channel(Progress::new(Phase::Inspect));
        Ok(Controls {
            hooks,
            env: Arc::new(Mutex::new(env)),
            tunables_tx: Some(tunables_tx),
            tunables,
            overrides_tx: Arc::new(overrides_tx),
            overrides,
            cut_over_locked,
            unpostpone: Arc::new(Notify::new()),
            window: Arc::new(watch::channel(None).0),
            progress,
            refresh: Arc::new(Notify::new()),
            refreshing: false,
            server: None,
            tasks: Vec::new(),
        })
    }

    pub fn env(&self) -> HookEnv {
        self.env.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update_env(&self, f: impl FnOnce(HookEnv) -> HookEnv) {
        let mut env = self.env.lock().unwrap_or_else(|p| p.into_inner());
        *env = f(env.clone());
    }

    /// Fires `event` with a fresh progress snapshot; a failing hook fails the run.
    pub async fn fire(&self, event: HookEvent) -> Result<()> {
        let mut progress = self.progress.subscribe();
        if self.refreshing {
            progress.mark_unchanged();
            self.refresh.notify_one();
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), progress.changed()).await;
        }
        let env = self.env().with_progress(&progress.borrow());
        self.hooks.fire(event, &env).await
    }

    /// Starts the control socket (when asked for) once the table and the run's names are
    /// known, and the task that carries out its events.
    pub fn serve(
        &mut self,
        cfg: &Config,
        table: &QualifiedName,
        names: &Names,
        streams: bool,
        phase: watch::Receiver<Phase>,
        abort: Arc<watch::Sender<Option<String>>>,
    ) -> Result<()> {
        let Some(tunables) = self.tunables_tx.take() else { return Ok(()) };
        if cfg.control.socket_file.is_none() && cfg.control.tcp_port.is_none() {
            self.tunables_tx = Some(tunables);
            return Ok(());
        }
        let (events_tx, events) = mpsc::channel(64);
        let ctx = ControlContext {
            tunables,
            progress: self.progress.subscribe(),
            phase,
            // The direct way has no slot: no stream coordinates to tell.
            coordinates: streams.then(|| CoordinatesSource { conn: cfg.conn.clone(), slot: names.slot.clone() }),
            table: TableGuard::new(&cfg.table, table),
            events: events_tx,
        };
        let server = ControlServer::spawn(&cfg.control, ctx)?;
        if let Some(path) = server.socket_file() {
            tracing::info!(socket = %path.display(), "serving interactive commands");
        }
        if let Some(addr) = server.tcp_addr() {
            tracing::info!(%addr, "serving interactive commands");
        }
        self.server = Some(server);
        let carry_out = EventHandler {
            overrides: self.overrides_tx.clone(),
            unpostpone: self.unpostpone.clone(),
            window: self.window.clone(),
            abort,
            hooks: self.hooks.clone(),
            env: self.env.clone(),
        };
        self.tasks.push(tokio::spawn(carry_out.run(events)));
        Ok(())
    }

    /// Keeps the copy's chunk size and nice ratio in step with the tunables.
    pub fn follow_tunables(&mut self, copy: Arc<CopyProgress>) {
        let mut tunables = self.tunables.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut last_chunk = tunables.borrow().chunk_size;
            copy.set_nice_ratio(tunables.borrow().nice_ratio);
            while tunables.changed().await.is_ok() {
                let t = tunables.borrow_and_update().clone();
                if t.chunk_size != last_chunk {
                    last_chunk = t.chunk_size;
                    copy.pin_chunk_size(t.chunk_size);
                    tracing::info!(chunk_size = t.chunk_size, "chunk size set; it no longer adapts to --chunk-time");
                }
                copy.set_nice_ratio(t.nice_ratio);
            }
        }));
    }

    pub fn spawn_task(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Runs hooks one after another, whoever fires them (the phase edges, the status timer,
/// the socket), so that no two hook scripts of one run overlap.
struct OneAtATime {
    inner: Arc<dyn Hooks>,
    lock: tokio::sync::Mutex<()>,
}

impl Hooks for OneAtATime {
    fn fire<'a>(&'a self, event: HookEvent, env: &'a HookEnv) -> hooks::HookFuture<'a> {
        Box::pin(async move {
            let _turn = self.lock.lock().await;
            self.inner.fire(event, env).await
        })
    }
}

/// Carries out what the socket asks for.
struct EventHandler {
    overrides: Arc<watch::Sender<Override>>,
    unpostpone: Arc<Notify>,
    window: Arc<watch::Sender<Option<bool>>>,
    abort: Arc<watch::Sender<Option<String>>>,
    hooks: Arc<dyn Hooks>,
    env: Arc<Mutex<HookEnv>>,
}

impl EventHandler {
    async fn run(self, mut events: mpsc::Receiver<ControlEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                ControlEvent::Throttle(ThrottleOverride::Force) => {
                    self.overrides.send_replace(Override::ForceThrottle);
                }
                ControlEvent::Throttle(ThrottleOverride::Release) => {
                    self.overrides.send_replace(Override::None);
                }
                ControlEvent::Unpostpone => self.unpostpone.notify_one(),
                ControlEvent::Revert => {
                    self.window.send_replace(Some(true));
                }
                ControlEvent::Finalize => {
                    self.window.send_replace(Some(false));
                }
                ControlEvent::Panic => {
                    tracing::error!("panic command on the control socket");
                    self.abort.send_replace(Some("panic command on the control socket".into()));
                }
                ControlEvent::Command(command) => {
                    // A slow hook must not delay a `panic` that follows.
                    let (hooks, env) = (self.hooks.clone(), self.env.lock().unwrap_or_else(|p| p.into_inner()).clone());
                    tokio::spawn(async move {
                        let env = env.with_command(command);
                        if let Err(e) = hooks.fire(HookEvent::InteractiveCommand, &env).await {
                            tracing::warn!(error = %e, "on-interactive-command hook failed");
                        }
                    });
                }
            }
        }
    }
}
