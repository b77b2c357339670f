//! The MQTT sink (rumqttc): every result goes through the on-disk outbox and is published
//! with QoS 1 to `<prefix>/<station>/<camera>/result`; a record leaves the outbox only on the
//! broker's PUBACK. On (re)connect glad publishes the retained `<prefix>/<station>/status`
//! `online`; the last will (retained) is `offline`, which the broker also sends when glad
//! stops (the connection closes without a DISCONNECT). Per camera, the retained
//! `<prefix>/<station>/<camera>/status` holds what the line watches between results:
//! `{"recipe": <name or null>, "drift": [<alarms>]}`, published when it changes (drift alarms
//! fire or clear, a recipe switch) and again on every (re)connect.
//!
//! Threads: `submit` hands the record to a bounded channel (full: dropped and counted). The
//! sink's own thread runs a small tokio runtime with two tasks: the network task polls
//! rumqttc's event loop (reconnecting with backoff), the controller writes the outbox and
//! publishes from it in order, at most `inflight` at once. On every new connection the
//! controller starts again from the oldest unacknowledged record, so every record published
//! while the broker was away arrives afterwards, in order (QoS 1: at least once; a record
//! whose PUBACK was lost with the connection is sent again).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::BufReader;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, MqttState, Outgoing, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

use super::check::topic_level;
use super::mqtt_config::{MqttSettings, MqttTlsConfig};
use super::outbox::Outbox;
use super::{FrameRecord, FrameResult, Health, Sink, SinkCounters};
use crate::telemetry::StationState;

/// Records whose JSON is larger are dropped and counted (a record is normally about 1 KiB).
pub const MAX_PAYLOAD: usize = 256 * 1024;

enum Ctl {
    Flush(std::sync::mpsc::Sender<Result<()>>),
    /// A camera's status payload changed.
    Status(String, String),
    Shutdown,
}

enum Net {
    Event(Event),
    Down(String),
}

#[derive(Debug, Clone, Copy)]
enum Tag {
    Status,
    Record(u64),
}

/// A snapshot of the sink's state (tests, `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttStats {
    pub connected: bool,
    /// Results in the outbox, not yet acknowledged by the broker.
    pub outbox_records: u64,
    pub outbox_bytes: u64,
    /// Records the broker acknowledged.
    pub acked: u64,
    /// Dropped: queue full or outbox over its bound.
    pub dropped: u64,
    /// Lost connections and failed connection attempts, outbox write errors.
    pub failures: u64,
}

#[derive(Debug)]
struct Shared {
    counters: SinkCounters,
    connected: AtomicBool,
    down: Mutex<Option<String>>,
    outbox_dropping: AtomicBool,
    outbox_records: AtomicU64,
    outbox_bytes: AtomicU64,
    acked: AtomicU64,
}

/// A camera's recipe and drift alarms, as its status topic carries them.
type CameraStatus = (Option<String>, Vec<String>);

#[derive(Debug)]
pub struct MqttSink {
    tx: mpsc::Sender<Arc<FrameRecord>>,
    ctl: mpsc::UnboundedSender<Ctl>,
    shared: Arc<Shared>,
    only_ng: bool,
    /// The status (recipe, drift alarms) last handed to the worker, per camera.
    status: Mutex<HashMap<String, CameraStatus>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MqttSink {
    /// Opens the outbox and starts the worker thread; connecting happens in the background.
    pub fn new(s: MqttSettings, state: Option<Arc<StationState>>) -> Result<MqttSink> {
        let outbox =
            Outbox::open(s.outbox.clone()).with_context(|| format!("sinks.mqtt.outbox.dir: opening {}", s.outbox.dir.display()))?;
        let options = mqtt_options(&s)?;
        let shared = Arc::new(Shared {
            counters: SinkCounters::new("mqtt", state),
            connected: AtomicBool::new(false),
            down: Mutex::new(None),
            outbox_dropping: AtomicBool::new(false),
            outbox_records: AtomicU64::new(outbox.len() as u64),
            outbox_bytes: AtomicU64::new(outbox.live_bytes()),
            acked: AtomicU64::new(0),
        });
        shared.counters.set_queued(outbox.len() as i64);
        if !outbox.is_empty() {
            tracing::info!(records = outbox.len(), bytes = outbox.live_bytes(), "mqtt: outbox holds unsent results; delivering them");
        }
        let only_ng = s.only_ng;
        let (tx, rx) = mpsc::channel(s.queue_capacity);
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            s,
            outbox,
            shared: shared.clone(),
            rx,
            ctl_rx,
            connected: false,
            cursor: 0,
            unmapped: VecDeque::new(),
            pkids: HashMap::new(),
            inflight: 0,
            statuses: HashMap::new(),
            status_sent: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("sink-mqtt".into())
            .spawn(move || {
                crate::asyncrt::runtime().block_on(worker.run(options));
            })
            .context("starting the mqtt sink thread")?;
        Ok(MqttSink { tx, ctl, shared, only_ng, status: Mutex::new(HashMap::new()), thread: Mutex::new(Some(thread)) })
    }

    pub fn stats(&self) -> MqttStats {
        MqttStats {
            connected: self.shared.connected.load(Ordering::Relaxed),
            outbox_records: self.shared.outbox_records.load(Ordering::Relaxed),
            outbox_bytes: self.shared.outbox_bytes.load(Ordering::Relaxed),
            acked: self.shared.acked.load(Ordering::Relaxed),
            dropped: self.shared.counters.dropped(),
            failures: self.shared.counters.failures(),
        }
    }
}

impl Sink for MqttSink {
    fn name(&self) -> &str {
        "mqtt"
    }

    fn submit(&self, result: &FrameResult) {
        // The camera's status follows every record, published or not (`only_ng`).
        let rec = &result.record;
        let mut last = self.status.lock().expect("mqtt status lock");
        if last.get(&rec.camera).is_none_or(|(recipe, drift)| *recipe != rec.recipe || *drift != rec.drift) {
            last.insert(rec.camera.clone(), (rec.recipe.clone(), rec.drift.clone()));
            let status = serde_json::json!({ "recipe": rec.recipe, "drift": rec.drift }).to_string();
            let _ = self.ctl.send(Ctl::Status(rec.camera.clone(), status));
        }
        drop(last);
        if self.only_ng && !result.record.is_ng() {
            return;
        }
        if self.tx.try_send(result.record.clone()).is_err() {
            self.shared.counters.add_dropped(1);
        }
    }

    /// Waits until everything submitted so far is in the outbox and fsync'd (delivery to the
    /// broker follows whenever it is reachable).
    fn flush(&self, timeout: Duration) -> Result<()> {
        let (reply, rx) = std::sync::mpsc::channel();
        self.ctl.send(Ctl::Flush(reply)).map_err(|_| anyhow!("mqtt sink stopped"))?;
        rx.recv_timeout(timeout).map_err(|_| anyhow!("mqtt: flush timed out after {timeout:?}"))?
    }

    fn health(&self) -> Health {
        if let Some(reason) = self.shared.down.lock().expect("mqtt down lock").clone() {
            return Health::Degraded(reason);
        }
        if self.shared.outbox_dropping.load(Ordering::Relaxed) {
            return Health::Degraded("outbox full: dropping the oldest results".into());
        }
        Health::Ok
    }
}

impl Drop for MqttSink {
    /// Persists what is queued (fsync) and stops; the broker then publishes the last will.
    fn drop(&mut self) {
        let _ = self.ctl.send(Ctl::Shutdown);
        if let Some(t) = self.thread.lock().expect("mqtt thread lock").take() {
            let _ = t.join();
        }
    }
}

fn mqtt_options(s: &MqttSettings) -> Result<MqttOptions> {
    let mut o = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    o.set_keep_alive(s.keepalive);
    o.set_clean_session(true);
    // Larger than any record we publish (see MAX_PAYLOAD): an oversize publish would fail the
    // connection every time it is retried.
    o.set_max_packet_size(2 * MAX_PAYLOAD, 2 * MAX_PAYLOAD);
    o.set_inflight(s.inflight.saturating_add(1));
    o.set_request_channel_capacity(s.inflight as usize + 16);
    o.set_last_will(LastWill::new(status_topic(s), "offline", QoS::AtLeastOnce, true));
    if let Some((user, password)) = &s.credentials {
        o.set_credentials(user.clone(), password.expose().to_string());
    }
    if let Some(tls) = &s.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls_config(tls)?))));
    }
    Ok(o)
}

/// A rustls client configuration (ring provider) trusting `ca_file` or the system's roots.
pub fn tls_config(tls: &MqttTlsConfig) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let f = File::open(path).with_context(|| format!("sinks.mqtt.tls.ca_file: opening {}", path.display()))?;
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut BufReader::new(f)) {
                let cert = cert.with_context(|| format!("sinks.mqtt.tls.ca_file: parsing {}", path.display()))?;
                roots.add(cert).with_context(|| format!("sinks.mqtt.tls.ca_file: a certificate in {}", path.display()))?;
                n += 1;
            }
            if n == 0 {
                bail!("sinks.mqtt.tls.ca_file: no PEM certificate in {}", path.display());
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!("sinks.mqtt.tls: no system root certificates found; set sinks.mqtt.tls.ca_file");
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("sinks.mqtt.tls: TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let f = File::open(cert).with_context(|| format!("sinks.mqtt.tls.client_cert_file: opening {}", cert.display()))?;
            let certs = rustls_pemfile::certs(&mut BufReader::new(f))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("sinks.mqtt.tls.client_cert_file: parsing {}", cert.display()))?;
            let f = File::open(key).with_context(|| format!("sinks.mqtt.tls.client_key_file: opening {}", key.display()))?;
            let key = rustls_pemfile::private_key(&mut BufReader::new(f))
                .context("sinks.mqtt.tls.client_key_file: parsing")?
                .ok_or_else(|| anyhow!("sinks.mqtt.tls.client_key_file: no private key in the file"))?;
            builder.with_client_auth_cert(certs, key).context("sinks.mqtt.tls: client certificate")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

fn status_topic(s: &MqttSettings) -> String {
    format!("{}/{}/status", s.topic_prefix, s.station)
}

/// The retained topic of a camera's status (recipe, drift alarms).
pub fn camera_status_topic(prefix: &str, station: &str, camera: &str) -> String {
    format!("{prefix}/{station}/{}/status", topic_level(camera))
}

/// The topic of a camera's results.
pub fn result_topic(prefix: &str, station: &str, camera: &str) -> String {
    format!("{prefix}/{station}/{}/result", topic_level(camera))
}

struct Worker {
    s: MqttSettings,
    outbox: Outbox,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Arc<FrameRecord>>,
    ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    connected: bool,
    /// The next outbox id to publish on this connection.
    cursor: u64,
    /// Publishes handed to rumqttc, waiting for their packet id (rumqttc hands them out in order).
    unmapped: VecDeque<Tag>,
    pkids: HashMap<u16, Tag>,
    /// Records published and not yet acknowledged on this connection.
    inflight: usize,
    /// The latest status payload per camera, and what this connection has published.
    statuses: HashMap<String, String>,
    status_sent: HashMap<String, String>,
}

impl Worker {
    async fn run(mut self, options: MqttOptions) {
        let (client, mut eventloop) = AsyncClient::new(options, self.s.inflight as usize + 16);
        eventloop.network_options.set_connection_timeout(self.s.connect_timeout.as_secs().max(1));
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let (resume_tx, resume_rx) = mpsc::unbounded_channel();
        let (rmin, rmax) = (self.s.reconnect_min, self.s.reconnect_max);
        let max_inflight = self.s.inflight.saturating_add(1);
        let net = tokio::spawn(net_task(eventloop, ev_tx, resume_rx, rmin, rmax, max_inflight));
        let mut tick = tokio::time::interval(self.s.outbox.fsync_interval.max(Duration::from_millis(5)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first_down = true;
        loop {
            tokio::select! {
                biased;
                c = self.ctl_rx.recv() => match c {
                    Some(Ctl::Flush(reply)) => {
                        self.drain();
                        let r = self.outbox.sync(true);
                        if let Err(e) = &r {
                            tracing::warn!(error = %e, "mqtt: outbox fsync failed");
                            self.shared.counters.add_failure();
                        }
                        let _ = reply.send(r);
                        self.pump(&client);
                    }
                    Some(Ctl::Status(camera, payload)) => {
                        self.statuses.insert(camera, payload);
                        self.publish_statuses(&client);
                    }
                    Some(Ctl::Shutdown) | None => {
                        self.drain();
                        if let Err(e) = self.outbox.sync(true) {
                            tracing::warn!(error = %e, "mqtt: outbox fsync failed at shutdown");
                        }
                        break;
                    }
                },
                n = ev_rx.recv() => match n {
                    Some(Net::Event(Event::Incoming(Incoming::ConnAck(_)))) => {
                        tracing::info!(host = %self.s.host, port = self.s.port, outbox = self.outbox.len(), "mqtt: connected");
                        first_down = true;
                        self.reset();
                        self.connected = true;
                        self.shared.connected.store(true, Ordering::Relaxed);
                        *self.shared.down.lock().expect("mqtt down lock") = None;
                        self.shared.counters.set_degraded(None);
                        if client.try_publish(status_topic(&self.s), QoS::AtLeastOnce, true, "online").is_ok() {
                            self.unmapped.push_back(Tag::Status);
                        }
                        self.cursor = self.outbox.first_live();
                        self.status_sent.clear();
                        self.publish_statuses(&client);
                        self.pump(&client);
                    }
                    Some(Net::Event(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Some(tag) = self.unmapped.pop_front() {
                            self.pkids.insert(pkid, tag);
                        }
                    }
                    Some(Net::Event(Event::Incoming(Incoming::PubAck(ack)))) => {
                        if let Some(Tag::Record(id)) = self.pkids.remove(&ack.pkid) {
                            self.inflight = self.inflight.saturating_sub(1);
                            self.outbox.ack(id);
                            self.shared.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        self.pump(&client);
                    }
                    Some(Net::Event(_)) => {}
                    Some(Net::Down(reason)) => {
                        let reason = format!("broker {}:{} unreachable: {reason}", self.s.host, self.s.port);
                        if first_down {
                            tracing::warn!(reason = %reason, outbox = self.outbox.len(), "mqtt: disconnected; results wait in the outbox");
                            first_down = false;
                        } else {
                            tracing::debug!(reason = %reason, "mqtt: still disconnected");
                        }
                        self.shared.counters.add_failure();
                        self.shared.connected.store(false, Ordering::Relaxed);
                        self.shared.counters.set_degraded(Some(reason.clone()));
                        *self.shared.down.lock().expect("mqtt down lock") = Some(reason);
                        self.connected = false;
                        self.reset();
                        if resume_tx.send(()).is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                r = self.rx.recv() => match r {
                    Some(rec) => {
                        self.push(&rec);
                        self.drain();
                        if let Err(e) = self.outbox.sync(false) {
                            tracing::warn!(error = %e, "mqtt: outbox fsync failed");
                            self.shared.counters.add_failure();
                        }
                        self.pump(&client);
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.outbox.sync(false) {
                        tracing::warn!(error = %e, "mqtt: outbox fsync failed");
                        self.shared.counters.add_failure();
                    }
                }
            }
            self.publish_gauges();
        }
        net.abort();
    }

    /// Forgets the packet bookkeeping of the previous connection.
    fn reset(&mut self) {
        self.unmapped.clear();
        self.pkids.clear();
        self.inflight = 0;
    }

    fn drain(&mut self) {
        while let Ok(rec) = self.rx.try_recv() {
            self.push(&rec);
        }
    }

    fn push(&mut self, rec: &FrameRecord) {
        let topic = result_topic(&self.s.topic_prefix, &self.s.station, &rec.camera);
        let payload = match serde_json::to_vec(rec) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "mqtt: cannot serialise a record");
                self.shared.counters.add_failure();
                return;
            }
        };
        if payload.len() > MAX_PAYLOAD {
            tracing::warn!(camera = %rec.camera, seq = rec.seq, bytes = payload.len(), "mqtt: record too large to publish; dropped");
            self.shared.counters.add_dropped(1);
            return;
        }
        match self.outbox.push(&topic, payload) {
            Ok((_, dropped)) if dropped > 0 => {
                self.shared.counters.add_dropped(dropped);
                if !self.shared.outbox_dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        max_bytes = self.s.outbox.max_bytes,
                        "mqtt: outbox full, dropping the oldest results (counted in glad_sink_dropped_total{{sink=\"mqtt\"}})"
                    );
                }
            }
            Ok((None, n)) => self.shared.counters.add_dropped(n),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "mqtt: outbox write failed; result dropped");
                self.shared.counters.add_dropped(1);
                self.shared.counters.add_failure();
            }
        }
    }

    /// Publishes (retained) each camera status this connection has not published yet. A state,
    /// not an event: only the latest counts, so it does not go through the outbox.
    fn publish_statuses(&mut self, client: &AsyncClient) {
        if !self.connected {
            return;
        }
        for (camera, payload) in &self.statuses {
            if self.status_sent.get(camera) == Some(payload) {
                continue;
            }
            let topic = camera_status_topic(&self.s.topic_prefix, &self.s.station, camera);
            if client.try_publish(topic, QoS::AtLeastOnce, true, payload.clone()).is_err() {
                break;
            }
            self.unmapped.push_back(Tag::Status);
            self.status_sent.insert(camera.clone(), payload.clone());
        }
    }

    /// Publishes from the outbox, in order, while the window has room.
    fn pump(&mut self, client: &AsyncClient) {
        if !self.connected {
            return;
        }
        self.cursor = self.cursor.max(self.outbox.first_live());
        while self.inflight < self.s.inflight as usize {
            let Some(e) = self.outbox.next_from(self.cursor) else { break };
            let (id, topic, payload) = (e.id, e.topic.clone(), e.payload.clone());
            if client.try_publish(topic, QoS::AtLeastOnce, false, payload).is_err() {
                break;
            }
            self.unmapped.push_back(Tag::Record(id));
            self.inflight += 1;
            self.cursor = id + 1;
        }
    }

    fn publish_gauges(&self) {
        let n = self.outbox.len() as u64;
        self.shared.outbox_records.store(n, Ordering::Relaxed);
        self.shared.outbox_bytes.store(self.outbox.live_bytes(), Ordering::Relaxed);
        self.shared.counters.set_queued(n as i64);
        // The dropping episode ends once the outbox is back under half its bound.
        if self.outbox.live_bytes() < self.outbox.max_live_bytes() / 2 && self.shared.outbox_dropping.swap(false, Ordering::Relaxed) {
            tracing::info!(dropped_total = self.shared.counters.dropped(), "mqtt: outbox below half its bound again");
        }
    }
}

/// Polls rumqttc's event loop. After a connection error it reports it and waits until the
/// controller has forgotten that connection, then throws away rumqttc's own retransmission
/// queue (the controller resends from the outbox) and reconnects after a backoff.
async fn net_task(
    mut eventloop: EventLoop,
    ev_tx: mpsc::UnboundedSender<Net>,
    mut resume_rx: mpsc::UnboundedReceiver<()>,
    rmin: Duration,
    rmax: Duration,
    max_inflight: u16,
) {
    let mut backoff = rmin;
    loop {
        match eventloop.poll().await {
            Ok(ev) => {
                if matches!(ev, Event::Incoming(Incoming::ConnAck(_))) {
                    backoff = rmin;
                }
                if ev_tx.send(Net::Event(ev)).is_err() {
                    return;
                }
            }
            Err(e) => {
                if ev_tx.send(Net::Down(e.to_string())).is_err() || resume_rx.recv().await.is_none() {
                    return;
                }
                eventloop.clean();
                eventloop.pending.clear();
                // A fresh packet state: no collision or buffered event of the old connection survives.
                eventloop.state = MqttState::new(max_inflight, false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(rmax);
            }
        }
    }
}
