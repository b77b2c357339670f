//! The process's one tokio runtime: the HTTP server and the async sinks (MQTT, Modbus) run
//! their tasks on it. Created on first use; never shut down (it lives as long as the process).

use std::sync::OnceLock;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The shared runtime (two worker threads: the async work is network I/O, not computation).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("glad-async")
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime (threads or an epoll instance could not be created)")
    })
}
