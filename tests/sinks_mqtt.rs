//! The MQTT sink against a real Mosquitto on a free 127.0.0.1 port: topics and payloads, the
//! retained status and last will, nothing lost (and order kept) while the broker is killed
//! mid-stream, the outbox bound dropping the oldest and counting, and a restarted sink
//! delivering the outbox it left. Skipped (with a message) when `mosquitto` is not installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, record, wait_until};
use glad_edge::sinks::{FrameRecord, Health, MqttConfig, MqttSink, Sink, SinkContext};
use glad_edge::telemetry::StationState;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn mosquitto() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"].iter().map(PathBuf::from).find(|p| p.exists())
}

macro_rules! need_mosquitto {
    () => {
        match mosquitto() {
            Some(b) => b,
            None => {
                eprintln!("SKIPPED: the `mosquitto` binary is not installed (apt-get install mosquitto)");
                return;
            }
        }
    };
}

/// A Mosquitto on 127.0.0.1:`port`, persisting sessions in `dir` (saved every second) so
/// that a persistent subscriber keeps its subscription and queue across a kill.
struct Broker {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn start(bin: &Path, port: u16, dir: &Path) -> Broker {
        let mut b = Broker { bin: bin.to_path_buf(), port, dir: dir.to_path_buf(), child: None };
        b.restart();
        b
    }

    fn restart(&mut self) {
        assert!(self.child.is_none());
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nuser root\n",
                self.port,
                self.dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("mosquitto.log")).unwrap();
        let child = Command::new(&self.bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        let up = wait_until(10.0, || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok());
        assert!(up, "mosquitto did not come up on port {}", self.port);
    }

    /// SIGKILL: no goodbye to anyone.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// A persistent-session subscriber to `glad/#` (QoS 1), forwarding every publish.
fn subscriber(port: u16, id: &str) -> (Client, Receiver<Msg>) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(o, 100);
    let (tx, rx) = channel();
    let (ready_tx, ready_rx) = channel();
    let c2 = client.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present {
                        c2.try_subscribe("glad/#", QoS::AtLeastOnce).unwrap();
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(Msg { topic: p.topic.clone(), payload: p.payload.to_vec(), retain: p.retain }).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("subscribed");
    (client, rx)
}

/// Receives until `done` says so (or `secs` pass); returns everything received.
fn collect(rx: &Receiver<Msg>, secs: f64, mut done: impl FnMut(&[Msg]) -> bool) -> Vec<Msg> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut out = Vec::new();
    while !done(&out) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Ok(m) = rx.recv_timeout(left.min(Duration::from_millis(100))) {
            out.push(m);
        }
    }
    out
}

/// The result records among `msgs`, in arrival order.
fn results(msgs: &[Msg]) -> Vec<FrameRecord> {
    msgs.iter().filter(|m| m.topic.ends_with("/result")).map(|m| serde_json::from_slice(&m.payload).unwrap()).collect()
}

/// Sequence numbers in order of first arrival (QoS 1 may deliver a record twice).
fn first_seqs(recs: &[FrameRecord]) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    recs.iter().filter(|r| seen.insert(r.seq)).map(|r| r.seq).collect()
}

fn config(port: u16, outbox: &Path) -> MqttConfig {
    let mut c = MqttConfig::new("127.0.0.1", port, outbox);
    c.reconnect_min_s = 0.05;
    c.reconnect_max_s = 0.3;
    c.connect_timeout_s = 2.0;
    c.outbox.fsync_interval_s = 0.02;
    c
}

/// For tests that restart the broker: glad retries every second while the test subscriber
/// retries every 50 ms, so the subscriber is back (and subscribed, should Mosquitto's
/// autosave have missed its session) before glad republishes.
fn slow_reconnect(port: u16, outbox: &Path) -> MqttConfig {
    let mut c = MqttConfig::new("127.0.0.1", port, outbox);
    c.reconnect_min_s = 1.0;
    c.reconnect_max_s = 1.0;
    c.connect_timeout_s = 2.0;
    c.outbox.fsync_interval_s = 0.02;
    c
}

fn ctx(station: &str, state: Option<Arc<StationState>>) -> SinkContext {
    SinkContext { station: station.into(), cameras: vec!["cam0".into(), "cam1".into()], state }
}

#[test]
fn results_arrive_with_topics_payloads_status_and_last_will() {
    let bin = need_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(&bin, port, dir.path());
    let (_c, rx) = subscriber(port, "sub-topics");

    let sink = config(port, &dir.path().join("outbox")).build(&ctx("st1", None)).unwrap();
    let sent: Vec<_> = (0..6).map(|i| record(if i % 2 == 0 { "cam0" } else { "cam1" }, i, i == 3)).collect();
    for r in &sent {
        sink.submit(r);
    }
    let msgs = collect(&rx, 10.0, |m| results(m).len() >= 6 && m.iter().any(|m| m.topic == "glad/st1/status"));
    let status: Vec<_> = msgs.iter().filter(|m| m.topic == "glad/st1/status").collect();
    assert_eq!(status[0].payload, b"online");
    let res: Vec<_> = msgs.iter().filter(|m| m.topic.ends_with("/result")).collect();
    assert_eq!(res.len(), 6, "{msgs:?}");
    for (m, r) in res.iter().zip(&sent) {
        assert_eq!(m.topic, format!("glad/st1/{}/result", r.record.camera));
        assert!(!m.retain);
        let got: FrameRecord = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(&got, &*r.record);
    }
    assert!(wait_until(5.0, || sink.stats().outbox_records == 0), "{:?}", sink.stats());
    assert_eq!(sink.health(), Health::Ok);

    // Dropping the sink closes the connection without DISCONNECT: the broker sends the will.
    drop(sink);
    let msgs = collect(&rx, 10.0, |m| m.iter().any(|m| m.topic == "glad/st1/status"));
    assert!(msgs.iter().any(|m| m.topic == "glad/st1/status" && m.payload == b"offline"), "{msgs:?}");
    // A fresh subscriber sees the retained status.
    let (_c2, rx2) = subscriber(port, "sub-retained");
    let msgs = collect(&rx2, 5.0, |m| m.iter().any(|m| m.topic == "glad/st1/status"));
    let st = msgs.iter().find(|m| m.topic == "glad/st1/status").expect("retained status");
    assert!(st.retain && st.payload == b"offline");

    // only_ng: normal frames are not published.
    let mut c = config(port, &dir.path().join("outbox2"));
    c.only_ng = true;
    let sink = c.build(&ctx("st2", None)).unwrap();
    for i in 0..4 {
        sink.submit(&record("cam0", i, i == 2));
    }
    let msgs = collect(&rx, 5.0, |m| m.iter().any(|m| m.topic == "glad/st2/cam0/result"));
    std::thread::sleep(Duration::from_millis(300));
    let mut msgs = msgs;
    msgs.extend(rx.try_iter());
    let st2: Vec<_> = results(&msgs).into_iter().filter(|r| r.camera == "cam0").collect();
    assert_eq!(st2.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn broker_killed_mid_stream_loses_nothing_and_keeps_order() {
    let bin = need_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(&bin, port, dir.path());
    let (_c, rx) = subscriber(port, "sub-kill");
    std::thread::sleep(Duration::from_millis(1500)); // the subscription is autosaved

    let state = Arc::new(StationState::new(&[("cam0".into(), false)], 8));
    let sink = Arc::new(slow_reconnect(port, &dir.path().join("outbox")).build(&ctx("st", Some(state.clone()))).unwrap());
    assert!(wait_until(5.0, || sink.stats().connected));
    let total = 150u64;
    let publisher = {
        let sink = sink.clone();
        std::thread::spawn(move || {
            for i in 0..total {
                sink.submit(&record("cam0", i, i % 7 == 0));
                std::thread::sleep(Duration::from_millis(4));
            }
        })
    };
    // Kill the broker while results stream in, keep it down a while, bring it back.
    std::thread::sleep(Duration::from_millis(150));
    broker.kill();
    assert!(wait_until(5.0, || !sink.stats().connected));
    assert!(matches!(sink.health(), Health::Degraded(_)));
    assert!(state.degraded().contains_key("mqtt"), "{:?}", state.degraded());
    std::thread::sleep(Duration::from_millis(300));
    let waiting = sink.stats().outbox_records;
    assert!(waiting > 0, "results should wait in the outbox while the broker is down");
    broker.restart();
    publisher.join().unwrap();

    let msgs = collect(&rx, 20.0, |m| first_seqs(&results(m)).len() as u64 >= total);
    let recs = results(&msgs);
    let seqs = first_seqs(&recs);
    assert_eq!(seqs, (0..total).collect::<Vec<_>>(), "every result arrives, in order ({} messages)", recs.len());
    assert!(wait_until(5.0, || sink.stats().outbox_records == 0), "{:?}", sink.stats());
    assert_eq!(sink.health(), Health::Ok);
    assert!(!state.degraded().contains_key("mqtt"));
    let stats = sink.stats();
    assert_eq!(stats.dropped, 0);
    assert!(stats.failures >= 1);
    eprintln!(
        "kill test: {} results, {} waited in the outbox at the kill, {} duplicates, {:?}",
        total,
        waiting,
        recs.len() as u64 - total,
        stats
    );
}

#[test]
fn outbox_bound_drops_the_oldest_and_counts_them() {
    let bin = need_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(&bin, port, dir.path());
    let (_c, rx) = subscriber(port, "sub-bound");
    std::thread::sleep(Duration::from_millis(1500));
    broker.kill();

    let state = Arc::new(StationState::new(&[("cam0".into(), false)], 8));
    let mut c = slow_reconnect(port, &dir.path().join("outbox"));
    c.outbox.max_bytes = 64 * 1024;
    let sink = c.build(&ctx("st", Some(state.clone()))).unwrap();
    let n = 400u64;
    for i in 0..n {
        sink.submit(&record("cam0", i, false));
        if i % 50 == 0 {
            sink.flush(Duration::from_secs(5)).unwrap();
        }
    }
    sink.flush(Duration::from_secs(5)).unwrap();
    let st = sink.stats();
    assert!(st.dropped > 0 && st.dropped < n, "{st:?}");
    assert_eq!(st.dropped + st.outbox_records, n, "{st:?}");
    assert!(st.outbox_bytes <= 64 * 1024, "{st:?}");
    let disk: u64 = std::fs::read_dir(dir.path().join("outbox")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(disk <= 64 * 1024 + 64, "outbox folder holds {disk} B");
    let text = state.metrics.render();
    assert!(text.contains(&format!("glad_sink_dropped_total{{sink=\"mqtt\"}} {}", st.dropped)), "{text}");
    assert!(text.contains(&format!("glad_sink_queued{{sink=\"mqtt\"}} {}", st.outbox_records)), "{text}");
    assert!(matches!(sink.health(), Health::Degraded(_)));

    // Back online: exactly the newest results arrive, in order.
    broker.restart();
    let kept = st.outbox_records;
    let msgs = collect(&rx, 20.0, |m| first_seqs(&results(m)).len() as u64 >= kept);
    let seqs = first_seqs(&results(&msgs));
    assert_eq!(seqs, (st.dropped..n).collect::<Vec<_>>());
    eprintln!("bound test: {n} results into a 64 KiB outbox: {} dropped (oldest), {kept} delivered", st.dropped);
}

#[test]
fn restarted_sink_delivers_the_outbox_it_left() {
    let bin = need_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(&bin, port, dir.path());
    let (_c, rx) = subscriber(port, "sub-restart");
    std::thread::sleep(Duration::from_millis(1500));
    broker.kill();

    let outbox = dir.path().join("outbox");
    let sink: MqttSink = slow_reconnect(port, &outbox).build(&ctx("st", None)).unwrap();
    for i in 0..25 {
        sink.submit(&record("cam1", i, i % 2 == 0));
    }
    sink.flush(Duration::from_secs(5)).unwrap();
    assert_eq!(sink.stats().outbox_records, 25);
    drop(sink); // glad stops with the broker away

    let sink = slow_reconnect(port, &outbox).build(&ctx("st", None)).unwrap();
    assert_eq!(sink.stats().outbox_records, 25, "the outbox survives the restart");
    broker.restart();
    sink.submit(&record("cam1", 25, false));
    let msgs = collect(&rx, 20.0, |m| first_seqs(&results(m)).len() >= 26);
    assert_eq!(first_seqs(&results(&msgs)), (0..26).collect::<Vec<_>>());
    assert!(wait_until(5.0, || sink.stats().outbox_records == 0), "{:?}", sink.stats());
    drop(sink);
    // Nothing left to resend on the next start.
    let sink = config(port, &outbox).build(&ctx("st", None)).unwrap();
    assert_eq!(sink.stats().outbox_records, 0);
}

fn sh(dir: &Path, cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(cmd).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn tls_with_a_ca_file_delivers_and_an_untrusted_broker_is_degraded() {
    let bin = need_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A throw-away CA and a server certificate for localhost (openssl CLI).
    let made = sh(d, "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=glad-test-ca")
        && sh(d, "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj /CN=localhost")
        && sh(d, "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf")
        && sh(d, "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf");
    if !made {
        eprintln!("SKIPPED: could not make test certificates with the openssl CLI");
        return;
    }
    let (plain, tls) = (free_port(), free_port());
    std::fs::write(
        d.join("tls.conf"),
        format!(
            "listener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nallow_anonymous true\nuser root\n",
            d.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("mosquitto.log")).unwrap();
    let child = Command::new(&bin).arg("-c").arg(d.join("tls.conf")).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let _broker = Broker { bin, port: plain, dir: d.to_path_buf(), child: Some(child) };
    assert!(wait_until(10.0, || std::net::TcpStream::connect(("127.0.0.1", tls)).is_ok()));
    let (_c, rx) = subscriber(plain, "sub-tls");

    let mut c = config(tls, &d.join("outbox"));
    c.host = "localhost".into();
    c.tls = Some(glad_edge::sinks::mqtt_config::MqttTlsConfig {
        ca_file: Some(d.join("ca.pem")),
        client_cert_file: None,
        client_key_file: None,
    });
    let sink = c.build(&ctx("tls", None)).unwrap();
    sink.submit(&record("cam0", 42, true));
    let msgs = collect(&rx, 10.0, |m| !results(m).is_empty());
    assert_eq!(results(&msgs)[0].seq, 42, "{msgs:?}");
    assert!(sink.stats().connected);

    // The system roots do not know this CA: the sink stays disconnected and says so.
    let mut c = config(tls, &d.join("outbox-untrusted"));
    c.host = "localhost".into();
    c.tls = Some(glad_edge::sinks::mqtt_config::MqttTlsConfig { ca_file: None, client_cert_file: None, client_key_file: None });
    match c.build(&ctx("tls2", None)) {
        Ok(sink) => {
            sink.submit(&record("cam0", 1, true));
            assert!(wait_until(5.0, || matches!(sink.health(), Health::Degraded(_))));
            assert!(!sink.stats().connected);
            assert_eq!(sink.stats().outbox_records, 1, "kept for later");
        }
        Err(e) => assert!(e.to_string().contains("no system root certificates"), "{e:#}"),
    }
}

#[test]
fn camera_status_is_retained_and_follows_drift_and_recipe() {
    let bin = need_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(&bin, port, dir.path());
    let (_c, rx) = subscriber(port, "sub-camera-status");
    // only_ng: the status follows the normal frames too, which are not published.
    let mut c = config(port, &dir.path().join("outbox"));
    c.only_ng = true;
    let sink = c.build(&ctx("st3", None)).unwrap();
    let with = |seq: u64, recipe: &str, drift: &[&str]| {
        let mut r = record("cam0", seq, false);
        let mut rec = (*r.record).clone();
        rec.recipe = Some(recipe.into());
        rec.drift = drift.iter().map(|d| d.to_string()).collect();
        r.record = Arc::new(rec);
        r
    };
    let topic = "glad/st3/cam0/status";
    // Connected first: statuses changed while away are published as the latest one only.
    assert!(wait_until(10.0, || sink.stats().connected), "{:?}", sink.stats());
    for seq in 0..3 {
        sink.submit(&with(seq, "a", &[]));
    }
    sink.submit(&with(3, "a", &["brightness"]));
    sink.submit(&with(4, "b", &["brightness"]));
    let msgs = collect(&rx, 10.0, |m| m.iter().filter(|m| m.topic == topic).count() >= 3);
    std::thread::sleep(Duration::from_millis(300));
    let mut msgs = msgs;
    msgs.extend(rx.try_iter());
    let status: Vec<serde_json::Value> =
        msgs.iter().filter(|m| m.topic == topic).map(|m| serde_json::from_slice(&m.payload).unwrap()).collect();
    assert_eq!(
        status,
        vec![
            serde_json::json!({"recipe": "a", "drift": []}),
            serde_json::json!({"recipe": "a", "drift": ["brightness"]}),
            serde_json::json!({"recipe": "b", "drift": ["brightness"]}),
        ],
        "one message per change, none for an unchanged status"
    );
    assert!(results(&msgs).is_empty(), "only_ng: no normal result is published");
    // A subscriber that comes later gets the latest status, retained.
    let (_c2, rx2) = subscriber(port, "sub-camera-status-late");
    let msgs = collect(&rx2, 5.0, |m| m.iter().any(|m| m.topic == topic));
    let st = msgs.iter().find(|m| m.topic == topic).expect("retained camera status");
    assert!(st.retain);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&st.payload).unwrap(),
        serde_json::json!({"recipe": "b", "drift": ["brightness"]})
    );
}
