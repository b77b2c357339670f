//! The Modbus TCP server for PLCs (tokio-modbus), on its own thread and tokio runtime.
//!
//! Per camera `i` (in `sinks.modbus.cameras` order) a block of 16 holding registers at
//! `16 * i` (also readable as input registers, FC 4) and trigger coil `i`:
//!
//! | offset | content |
//! |---|---|
//! | 0 | heartbeat: counts up (wrapping) once per `heartbeat_interval_s` while glad runs |
//! | 1 | last frame's `seq`, high word of its low 32 bits |
//! | 2 | last frame's `seq`, low word |
//! | 3 | verdict: 0 none yet / no threshold, 1 OK, 2 NG, 3 error |
//! | 4 | score x 1000, rounded, clamped to 0..=65535 (0 when absent) |
//! | 5 | threshold x 1000, rounded, clamped to 0..=65535 (0 when absent) |
//! | 6 | results of this camera (wrapping counter; changes with every record) |
//! | 7 | frames dropped before the last record (clamped to 65535) |
//! | 8 | drift alarms, one bit each: 0 brightness, 1 contrast, 2 sharpness, 3 score (0: none) |
//! | 9 | the active recipe's number (1..=n, its place in `cameras[i].recipes`; 0: no recipes); **writable** |
//! | 10..15 | reserved, read 0 |
//!
//! Coil `i` is the camera's trigger: the PLC writes 1, glad fires `Triggers::fire(camera)`
//! and clears the coil when the camera's next record arrives. Writing 1 to a coil that is
//! still set fires nothing more; writing 0 only clears the coil.
//!
//! Register 9 of a block selects the camera's recipe (FC 6, or FC 16 over that one register):
//! the next frame the station takes is inspected under it and its record names it. A number
//! outside 1..=n, or a write to a camera without recipes, is refused with `IllegalDataValue`
//! (0x03) and a warning in the log. Writes to anything else are refused: register writes and
//! coils outside the map with `IllegalDataAddress` (0x02), other functions with
//! `IllegalFunction` (0x01). Reads outside the map get `IllegalDataAddress`.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response};

use super::modbus_config::ModbusSettings;
use super::{FrameRecord, FrameResult, Health, Sink, Verdict};
use crate::telemetry::StationState;

/// Holding registers per camera block.
pub const BLOCK: usize = 16;
pub const REG_HEARTBEAT: usize = 0;
pub const REG_SEQ_HI: usize = 1;
pub const REG_SEQ_LO: usize = 2;
pub const REG_VERDICT: usize = 3;
pub const REG_SCORE: usize = 4;
pub const REG_THRESHOLD: usize = 5;
pub const REG_COUNT: usize = 6;
pub const REG_DROPPED: usize = 7;
/// Drift alarms of the camera, one bit each: 0 brightness, 1 contrast, 2 sharpness, 3 score.
pub const REG_DRIFT: usize = 8;
/// The active recipe's number (from 1; 0: the camera has no recipes); the PLC writes it to switch.
pub const REG_RECIPE: usize = 9;

/// The bits of `REG_DRIFT` for a record's drift alarms.
pub fn drift_bits(alarms: &[String]) -> u16 {
    alarms.iter().fold(0, |b, a| {
        b | match a.as_str() {
            "brightness" => 1,
            "contrast" => 2,
            "sharpness" => 4,
            "score" => 8,
            _ => 0,
        }
    })
}

pub const VERDICT_NONE: u16 = 0;
pub const VERDICT_OK: u16 = 1;
pub const VERDICT_NG: u16 = 2;
pub const VERDICT_ERROR: u16 = 3;

#[derive(Debug)]
struct Map {
    index: HashMap<String, usize>,
    cameras: Vec<String>,
    regs: Vec<u16>,
    coils: Vec<bool>,
}

/// A value x 1000, rounded and clamped to the u16 range (absent or NaN: 0).
pub fn milli(v: Option<f32>) -> u16 {
    match v {
        Some(v) if v.is_finite() => (f64::from(v) * 1000.0).round().clamp(0.0, 65535.0) as u16,
        Some(v) if v == f32::INFINITY => u16::MAX,
        _ => 0,
    }
}

impl Map {
    fn apply(&mut self, rec: &FrameRecord) -> bool {
        let Some(&i) = self.index.get(&rec.camera) else { return false };
        let b = &mut self.regs[i * BLOCK..(i + 1) * BLOCK];
        let seq = rec.seq as u32;
        b[REG_SEQ_HI] = (seq >> 16) as u16;
        b[REG_SEQ_LO] = seq as u16;
        b[REG_VERDICT] = if !rec.ok {
            VERDICT_ERROR
        } else {
            match rec.verdict {
                Some(Verdict::Normal) => VERDICT_OK,
                Some(Verdict::Anomalous) => VERDICT_NG,
                None => VERDICT_NONE,
            }
        };
        b[REG_SCORE] = milli(rec.score);
        b[REG_THRESHOLD] = milli(rec.threshold);
        b[REG_COUNT] = b[REG_COUNT].wrapping_add(1);
        b[REG_DROPPED] = rec.dropped.min(u64::from(u16::MAX)) as u16;
        b[REG_DRIFT] = drift_bits(&rec.drift);
        self.coils[i] = false;
        true
    }

    /// The addressed range. A quantity outside the protocol's limits for the function
    /// (`max`: 125 registers, 2000 coils; 0 never) is an illegal data value (0x03), as the
    /// Modbus specification orders; a valid quantity past the map an illegal address (0x02).
    fn range(len: usize, addr: u16, qty: u16, max: u16) -> Result<std::ops::Range<usize>, ExceptionCode> {
        let (a, n) = (addr as usize, qty as usize);
        if qty == 0 || qty > max {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if a + n > len {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok(a..a + n)
    }
}

#[derive(Clone)]
struct Service {
    map: Arc<Mutex<Map>>,
    state: Option<Arc<StationState>>,
}

impl Service {
    fn handle(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        let mut map = self.map.lock().expect("modbus map lock");
        // The recipe registers show the switch in force, whoever made it (PLC, HTTP, reload).
        if let Some(state) = &self.state {
            for i in 0..map.cameras.len() {
                let n = state.recipes.view(&map.cameras[i]).map_or(0, |v| v.number.min(u16::MAX as usize) as u16);
                map.regs[i * BLOCK + REG_RECIPE] = n;
            }
        }
        match req {
            Request::ReadHoldingRegisters(a, n) => {
                let r = Map::range(map.regs.len(), a, n, 125)?;
                Ok(Response::ReadHoldingRegisters(map.regs[r].to_vec()))
            }
            Request::ReadInputRegisters(a, n) => {
                let r = Map::range(map.regs.len(), a, n, 125)?;
                Ok(Response::ReadInputRegisters(map.regs[r].to_vec()))
            }
            Request::ReadCoils(a, n) => {
                let r = Map::range(map.coils.len(), a, n, 2000)?;
                Ok(Response::ReadCoils(map.coils[r].to_vec()))
            }
            Request::WriteSingleCoil(a, v) => {
                let r = Map::range(map.coils.len(), a, 1, 1)?;
                self.check_coil(&map, r.start, v)?;
                self.set_coil(&mut map, r.start, v)?;
                Ok(Response::WriteSingleCoil(a, v))
            }
            Request::WriteMultipleCoils(a, vs) => {
                let r = Map::range(map.coils.len(), a, vs.len().min(u16::MAX as usize) as u16, 1968)?;
                for (i, &v) in r.clone().zip(vs.iter()) {
                    self.check_coil(&map, i, v)?;
                }
                for (i, &v) in r.zip(vs.iter()) {
                    self.set_coil(&mut map, i, v)?;
                }
                Ok(Response::WriteMultipleCoils(a, vs.len() as u16))
            }
            Request::WriteSingleRegister(a, v) if a as usize % BLOCK == REG_RECIPE && (a as usize) < map.regs.len() => {
                self.select_recipe(&mut map, a as usize, v)?;
                Ok(Response::WriteSingleRegister(a, v))
            }
            Request::WriteMultipleRegisters(a, ref vs)
                if vs.len() == 1 && a as usize % BLOCK == REG_RECIPE && (a as usize) < map.regs.len() =>
            {
                self.select_recipe(&mut map, a as usize, vs[0])?;
                Ok(Response::WriteMultipleRegisters(a, 1))
            }
            Request::WriteSingleRegister(..)
            | Request::WriteMultipleRegisters(..)
            | Request::MaskWriteRegister(..)
            | Request::ReadWriteMultipleRegisters(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    /// The PLC's recipe switch: register `addr` (a block's `REG_RECIPE`) gets `number`.
    fn select_recipe(&self, map: &mut Map, addr: usize, number: u16) -> Result<(), ExceptionCode> {
        let camera = map.cameras[addr / BLOCK].clone();
        let Some(state) = &self.state else { return Err(ExceptionCode::IllegalDataValue) };
        match state.recipes.select_number(&camera, u64::from(number), "modbus") {
            Ok(view) => {
                map.regs[addr] = view.number as u16;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(camera, number, error = %e, "modbus: recipe write refused");
                Err(ExceptionCode::IllegalDataValue)
            }
        }
    }

    /// A trigger coil of a camera that streams continuously is refused (illegal data value),
    /// as HTTP answers 409.
    fn check_coil(&self, map: &Map, i: usize, v: bool) -> Result<(), ExceptionCode> {
        let continuous = self.state.as_ref().and_then(|s| s.cameras.get(&map.cameras[i])).is_some_and(|c| !c.triggered);
        if v && continuous {
            tracing::warn!(camera = %map.cameras[i], "modbus: trigger coil of a camera without `trigger: true` refused");
            return Err(ExceptionCode::IllegalDataValue);
        }
        Ok(())
    }

    /// Sets a coil; a rising edge fires the camera's trigger. A full trigger queue answers
    /// "server device busy" (0x06) and leaves the coil clear: the PLC may retry.
    fn set_coil(&self, map: &mut Map, i: usize, v: bool) -> Result<(), ExceptionCode> {
        let was = map.coils[i];
        if v && !was {
            let camera = &map.cameras[i];
            tracing::debug!(camera, "modbus: trigger coil set");
            if let Some(s) = &self.state {
                if let Err(e) = s.triggers.fire(camera) {
                    tracing::warn!(camera, error = %e, "modbus: trigger refused");
                    return Err(ExceptionCode::ServerDeviceBusy);
                }
            }
        }
        map.coils[i] = v;
        Ok(())
    }
}

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        ready(self.handle(req))
    }
}

#[derive(Debug)]
pub struct ModbusSink {
    map: Arc<Mutex<Map>>,
    addr: SocketAddr,
    failed: Arc<AtomicBool>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ModbusSink {
    /// Binds the port now (errors come back here) and serves on a thread of its own.
    pub fn new(s: ModbusSettings, state: Option<Arc<StationState>>) -> Result<ModbusSink> {
        let n = s.cameras.len();
        let map = Arc::new(Mutex::new(Map {
            index: s.cameras.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect(),
            cameras: s.cameras.clone(),
            regs: vec![0; n * BLOCK],
            coils: vec![false; n],
        }));
        let listener = std::net::TcpListener::bind(s.addr).with_context(|| format!("sinks.modbus: binding {}", s.addr))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let failed = Arc::new(AtomicBool::new(false));
        let service = Service { map: map.clone(), state };
        let (map2, failed2, hb) = (map.clone(), failed.clone(), s.heartbeat_interval);
        let thread = std::thread::Builder::new()
            .name("sink-modbus".into())
            .spawn(move || {
                crate::asyncrt::runtime().block_on(serve(listener, service, map2, hb, stop_rx, failed2));
            })
            .context("starting the modbus thread")?;
        tracing::info!(%addr, cameras = n, "modbus: serving");
        Ok(ModbusSink { map, addr, failed, stop: Mutex::new(Some(stop_tx)), thread: Mutex::new(Some(thread)) })
    }

    /// The address the server listens on (port 0 in the configuration: the one it got).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of the holding registers (tests, diagnostics).
    pub fn registers(&self) -> Vec<u16> {
        self.map.lock().expect("modbus map lock").regs.clone()
    }
}

async fn serve(
    listener: std::net::TcpListener,
    service: Service,
    map: Arc<Mutex<Map>>,
    heartbeat: Duration,
    stop: tokio::sync::oneshot::Receiver<()>,
    failed: Arc<AtomicBool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "modbus: listener");
            failed.store(true, Ordering::Relaxed);
            return;
        }
    };
    let beat = tokio::spawn(async move {
        let mut t = tokio::time::interval(heartbeat);
        loop {
            t.tick().await;
            let mut m = map.lock().expect("modbus map lock");
            for b in m.regs.chunks_mut(BLOCK) {
                b[REG_HEARTBEAT] = b[REG_HEARTBEAT].wrapping_add(1);
            }
        }
    });
    let server = Server::new(listener);
    let on_connected = |stream, addr| {
        let service = service.clone();
        async move { accept_tcp_connection(stream, addr, move |_| Ok(Some(service.clone()))) }
    };
    let on_error = |e: std::io::Error| tracing::debug!(error = %e, "modbus: connection ended");
    let stop = async move {
        let _ = stop.await;
    };
    if let Err(e) = server.serve_until(&on_connected, on_error, stop).await {
        tracing::error!(error = %e, "modbus: server stopped");
        failed.store(true, Ordering::Relaxed);
    }
    // The runtime is shared: tasks of this sink end with it.
    beat.abort();
}

impl Sink for ModbusSink {
    fn name(&self) -> &str {
        "modbus"
    }

    /// Updates the camera's registers in place (a short lock, no I/O) and clears its trigger coil.
    fn submit(&self, result: &FrameResult) {
        self.map.lock().expect("modbus map lock").apply(&result.record);
    }

    fn flush(&self, _timeout: Duration) -> Result<()> {
        Ok(())
    }

    fn health(&self) -> Health {
        if self.failed.load(Ordering::Relaxed) {
            Health::Degraded("modbus server stopped".into())
        } else {
            Health::Ok
        }
    }
}

impl Drop for ModbusSink {
    fn drop(&mut self) {
        if let Some(s) = self.stop.lock().expect("modbus stop lock").take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.lock().expect("modbus thread lock").take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milli_rounds_and_clamps() {
        assert_eq!(milli(Some(0.1234)), 123);
        assert_eq!(milli(Some(-1.0)), 0);
        assert_eq!(milli(Some(1e6)), 65535);
        assert_eq!(milli(Some(f32::NAN)), 0);
        assert_eq!(milli(None), 0);
    }
}
