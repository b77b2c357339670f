//! The Modbus TCP server against a tokio-modbus client on 127.0.0.1: the register blocks
//! after records, the heartbeat, the trigger coil (Triggers gets it; cleared by the camera's
//! next record), and exceptions for illegal writes and reads.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::record;
use glad_edge::sinks::{FrameRecord, FrameResult, ModbusConfig, Sink, SinkContext};
use glad_edge::telemetry::StationState;
use tokio_modbus::prelude::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn with(r: &FrameResult, f: impl FnOnce(&mut FrameRecord)) -> FrameResult {
    let mut rec = (*r.record).clone();
    f(&mut rec);
    FrameResult { record: Arc::new(rec), input: None, heatmap: None }
}

#[test]
fn registers_trigger_coils_and_exceptions() {
    let cams = vec!["cam0".to_string(), "cam1".to_string()];
    let state = Arc::new(StationState::new(&[("cam0".into(), true), ("cam1".into(), true)], 8));
    let mut cfg = ModbusConfig::new(0, &[]);
    cfg.cameras = None; // the station's cameras, in order
    cfg.heartbeat_interval_s = 0.05;
    let ctx = SinkContext { station: "st".into(), cameras: cams, state: Some(state.clone()) };
    let sink = cfg.build(&ctx).unwrap();
    let addr = sink.local_addr();
    assert!(addr.ip().is_loopback());

    rt().block_on(async {
        let mut c = tokio::time::timeout(Duration::from_secs(5), tcp::connect(addr)).await.unwrap().unwrap();
        let io = Duration::from_secs(5);

        // Before any record: zeros but the heartbeat, which counts.
        let r0 = tokio::time::timeout(io, c.read_holding_registers(0, 32)).await.unwrap().unwrap().unwrap();
        assert_eq!(r0.len(), 32);
        assert!(r0[1..16].iter().all(|&v| v == 0), "{r0:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r1 = c.read_holding_registers(0, 1).await.unwrap().unwrap();
        assert!(r1[0] > r0[0], "heartbeat {} -> {}", r0[0], r1[0]);

        // An NG frame on cam0 with a 32-bit sequence number, an error on cam1.
        let ng = with(&record("cam0", 70_000, true), |r| {
            r.score = Some(0.5126);
            r.threshold = Some(0.3);
            r.dropped = 4;
        });
        sink.submit(&ng);
        let err = with(&record("cam1", 5, false), |r| {
            r.ok = false;
            r.error = Some("decode".into());
            r.score = None;
            r.verdict = None;
        });
        sink.submit(&err);
        let b = c.read_holding_registers(0, 32).await.unwrap().unwrap();
        assert_eq!(&b[1..8], &[1, 4464, 2, 513, 300, 1, 4], "cam0 block {b:?}");
        assert_eq!(&b[17..23], &[0, 5, 3, 0, 500, 1], "cam1 block {b:?}");
        // The same map as input registers (FC 4).
        let inp = c.read_input_registers(16, 8).await.unwrap().unwrap();
        assert_eq!(&inp[1..7], &[0, 5, 3, 0, 500, 1]);

        // An OK frame with a huge score: clamped to 65535.
        sink.submit(&with(&record("cam0", 70_001, false), |r| r.score = Some(1e9)));
        let b = c.read_holding_registers(1, 6).await.unwrap().unwrap();
        assert_eq!(b, vec![1, 4465, 1, 65_535, 500, 2]);

        // The PLC triggers cam1: Triggers gets it; the coil stays set until cam1's next record.
        assert_eq!(state.triggers.pending("cam1"), 0);
        c.write_single_coil(1, true).await.unwrap().unwrap();
        assert_eq!(state.triggers.pending("cam1"), 1);
        assert_eq!(state.triggers.pending("cam0"), 0);
        assert_eq!(c.read_coils(0, 2).await.unwrap().unwrap(), vec![false, true]);
        c.write_single_coil(1, true).await.unwrap().unwrap(); // still set: no second trigger
        assert_eq!(state.triggers.pending("cam1"), 1);
        sink.submit(&record("cam0", 70_002, false));
        assert_eq!(c.read_coils(0, 2).await.unwrap().unwrap(), vec![false, true], "another camera's record leaves it");
        assert!(state.triggers.take("cam1"));
        sink.submit(&record("cam1", 6, true));
        assert_eq!(c.read_coils(0, 2).await.unwrap().unwrap(), vec![false, false], "cleared by cam1's next record");
        c.write_multiple_coils(0, &[true, true]).await.unwrap().unwrap();
        assert_eq!((state.triggers.pending("cam0"), state.triggers.pending("cam1")), (1, 1));

        // Illegal writes and reads: exceptions, nothing changes.
        let before = sink.registers();
        assert_eq!(c.write_single_register(3, 7).await.unwrap(), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(c.write_multiple_registers(0, &[1, 2]).await.unwrap(), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(c.write_single_coil(2, true).await.unwrap(), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(c.write_multiple_coils(1, &[true, true]).await.unwrap(), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(c.read_holding_registers(30, 3).await.unwrap(), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(c.read_discrete_inputs(0, 1).await.unwrap(), Err(ExceptionCode::IllegalFunction));
        let after = sink.registers();
        let strip_hb = |v: &[u16]| v.iter().enumerate().filter(|(i, _)| i % 16 != 0).map(|(_, &x)| x).collect::<Vec<_>>();
        assert_eq!(strip_hb(&before), strip_hb(&after));
        assert_eq!((state.triggers.pending("cam0"), state.triggers.pending("cam1")), (1, 1));
    });
    assert_eq!(sink.health(), glad_edge::sinks::Health::Ok);
    drop(sink);
    // The port is released when the sink goes.
    assert!(std::net::TcpListener::bind(addr).is_ok());
}

/// The coil of a camera that streams continuously is refused as HTTP refuses it (409 there,
/// an illegal data value here); quantities outside the protocol's limits are illegal data
/// values (0x03), not addresses; a full trigger queue answers "busy" and loses nothing.
#[test]
fn continuous_camera_coils_bad_quantities_and_full_trigger_queues_are_refused() {
    let cams = vec!["cont".to_string(), "trig".to_string()];
    let state = Arc::new(StationState::new(&[("cont".into(), false), ("trig".into(), true)], 8));
    let mut cfg = ModbusConfig::new(0, &[]);
    cfg.cameras = None;
    let ctx = SinkContext { station: "st".into(), cameras: cams, state: Some(state.clone()) };
    let sink = cfg.build(&ctx).unwrap();
    let addr = sink.local_addr();
    rt().block_on(async {
        let mut c = tokio::time::timeout(Duration::from_secs(5), tcp::connect(addr)).await.unwrap().unwrap();
        assert_eq!(c.write_single_coil(0, true).await.unwrap(), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(state.triggers.pending("cont"), 0);
        assert_eq!(c.read_holding_registers(0, 0).await.unwrap(), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(c.read_holding_registers(0, 126).await.unwrap(), Err(ExceptionCode::IllegalDataValue));
        // Fill the trigger queue of `trig`; the next rising edge is refused and counted nowhere.
        for _ in 0..glad_edge::telemetry::trigger::MAX_PENDING {
            state.triggers.fire("trig").unwrap();
        }
        assert_eq!(c.write_single_coil(1, true).await.unwrap(), Err(ExceptionCode::ServerDeviceBusy));
        assert_eq!(c.read_coils(1, 1).await.unwrap().unwrap(), vec![false], "the coil stays clear so the PLC can retry");
        assert_eq!(state.triggers.pending("trig"), glad_edge::telemetry::trigger::MAX_PENDING);
    });
}
