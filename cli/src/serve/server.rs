//! The server's life: bind, route, accept connections (each with a header read
//! timeout), and shut down gracefully: stop accepting, end event streams, cancel the
//! jobs this server runs at a checkpoint (they stay resumable), let requests in
//! flight finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anneal::{Error, Home};
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::state::{AppState, Shared};
use super::{api, dashboard, generate, http, jobs, openai};

/// How `anneal serve` runs ([`super::ServeArgs::config`] builds one from flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free port ([`Server::addr`] tells which).
    pub addr: SocketAddr,
    /// No token needed. Refused unless `addr` is a loopback address.
    pub no_auth: bool,
    /// Origins allowed to call from a browser (`*`: any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes (uploads included); larger is 413.
    pub max_body: usize,
    /// Generations at once; more are 429 with `Retry-After`.
    pub max_generations: usize,
    /// Models kept loaded for generation.
    pub loaded_models: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Time a client has to send a JSON body, or each piece of an upload.
    pub body_timeout: Duration,
    /// Time, on shutdown, for the jobs this server runs to reach a checkpoint.
    pub shutdown_grace: Duration,
    /// One JSON line per request on stderr.
    pub log: bool,
    /// Shut down on SIGINT / SIGTERM (the command does; tests stop with [`Server::shutdown`]).
    pub signals: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8420)),
            no_auth: false,
            cors_origins: Vec::new(),
            max_body: 100 << 20,
            max_generations: 2,
            loaded_models: 2,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(120),
            log: true,
            signals: false,
        }
    }
}

impl ServerConfig {
    /// Refuses what must not run: `--no-auth` off loopback, zero limits.
    pub fn check(&self) -> anneal::Result<()> {
        if self.no_auth && !self.addr.ip().is_loopback() {
            return Err(Error::config(
                "no_auth",
                format!(
                    "refused on {}: without tokens the server may only listen on a loopback address (127.0.0.1, ::1)",
                    self.addr.ip()
                ),
            ));
        }
        for (field, v) in [("max_body", self.max_body), ("max_generations", self.max_generations)] {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if self.header_timeout.is_zero() {
            return Err(Error::config("header_timeout", "must be at least 1 second"));
        }
        if self.body_timeout.is_zero() {
            return Err(Error::config("body_timeout", "must be at least 1 second"));
        }
        for o in &self.cors_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(Error::config("cors_origin", format!("`{o}` is not an origin (https://host[:port] or *)")));
            }
        }
        Ok(())
    }
}

/// A running server. [`Server::shutdown`] stops it gracefully; dropping it does too.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<anneal::Result<()>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Binds `config.addr` and serves `home` on a runtime of its own (a thread), so
    /// synchronous callers and tests can start it. Returns once it is listening.
    pub fn start(home: Home, config: ServerConfig) -> anneal::Result<Server> {
        config.check()?;
        let std_listener = std::net::TcpListener::bind(config.addr)
            .map_err(|e| Error::config("port", format!("cannot listen on {}: {e}", config.addr)))?;
        std_listener.set_nonblocking(true).map_err(|e| Error::io("listener", e))?;
        let addr = std_listener.local_addr().map_err(|e| Error::io("listener", e))?;
        let (stop, stopped) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("anneal-serve")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the server's runtime: {e}")))?;
        let stop_tx = stop.clone();
        let thread = std::thread::Builder::new()
            .name("anneal-serve".into())
            .spawn(move || {
                let out = rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).map_err(|e| Error::io("listener", e))?;
                    serve(home, config, listener, stop_tx, stopped).await
                });
                // Core calls still running on the blocking pool (a generation) are left
                // to finish on their own; the process is ending or the test moving on.
                rt.shutdown_timeout(Duration::from_secs(5));
                out
            })
            .map_err(|e| Error::Internal(format!("cannot start the server thread: {e}")))?;
        Ok(Server { addr, stop, thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops gracefully and waits until it has (jobs it runs are cancelled at a
    /// checkpoint and stay resumable).
    pub fn shutdown(mut self) -> anneal::Result<()> {
        let _ = self.stop.send(true);
        self.join()
    }

    /// Waits until the server stops (a signal, with [`ServerConfig::signals`]).
    pub fn wait(mut self) -> anneal::Result<()> {
        self.join()
    }

    fn join(&mut self) -> anneal::Result<()> {
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err(Error::Internal("the server thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = self.join();
    }
}

/// Every route, with the layers: log (outermost), CORS, tokens, body limit.
pub(crate) fn router(state: Shared) -> Router {
    let max_body = state.config.max_body;
    Router::new()
        .merge(api::routes())
        .merge(jobs::routes())
        .merge(generate::routes())
        .merge(openai::routes())
        .merge(dashboard::router())
        .fallback(http::no_route)
        .method_not_allowed_fallback(http::wrong_method)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(from_fn_with_state(state.clone(), http::auth_layer))
        .layer(from_fn_with_state(state.clone(), http::cors_layer))
        .layer(from_fn_with_state(state.clone(), http::log_layer))
        .with_state(state)
}

async fn serve(
    home: Home,
    config: ServerConfig,
    listener: TcpListener,
    stop_tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) -> anneal::Result<()> {
    let header_timeout = config.header_timeout;
    let grace = config.shutdown_grace;
    if config.signals {
        let tx = stop_tx.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = tx.send(true);
        });
    }
    let state: Shared = Arc::new(AppState::new(home, config, stop.clone()));
    let app = router(state.clone());
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let mut stop = stop.clone();
                conns.spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = super::state::stopped(&mut stop) => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
            _ = super::state::stopped(&mut stop) => break,
        }
    }
    drop(listener);
    // Jobs this server runs stop at their next step with a checkpoint (resumable).
    let handles = state.job_handles();
    for h in &handles {
        h.cancel();
    }
    let waited = tokio::task::spawn_blocking(move || {
        for h in handles {
            let _ = h.wait_timeout(grace);
        }
    });
    let _ = waited.await;
    // Requests in flight finish (event streams end on the stop signal).
    let _ = tokio::time::timeout(Duration::from_secs(10), async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
