//! NCCL backend (cargo feature `nccl`), for groups of GPU workers: activations stay on the
//! GPU fabric (NVLink, InfiniBand) instead of crossing host sockets.
//!
//! NCCL is reached through cudarc with dynamic loading, so this compiles and type-checks on
//! machines without CUDA and finds the libraries at run time. How cudarc finds them: it tries
//! `dlopen` on a fixed list of names built by `cudarc::get_lib_name_candidates("nccl")`:
//! `libnccl.so`, `libnccl64.so`, `libnccl64_12.so`, ..., `libnccl.so.12`, `.11`, `.10`, `.9`,
//! `.1`, but **not** `libnccl.so.2`, the soname NCCL actually ships (the libnccl2 package and
//! the `nvidia-nccl-cu12` wheel provide only `libnccl.so.2`). So `libnccl.so` must resolve:
//! install the development package (libnccl-dev adds the `libnccl.so` link) or create the link
//! yourself (`ln -s libnccl.so.2 $DIR/libnccl.so`) in a directory on `LD_LIBRARY_PATH`. The
//! CUDA driver is found as `libcuda.so` or `libcuda.so.1`. When a library is missing, every
//! entry point returns [`CommError::NotAvailable`] saying which and how to fix it; cudarc's
//! own loader would panic, so it is only called after the presence checks, and every call
//! that can panic is caught. In a binary that also has candle's CUDA backend (the
//! `cuda-linked` feature), cudarc links both libraries instead, and the checks are moot.
//!
//! All-to-all-v exchanges the byte counts first (an all-to-all of u64), copies the host
//! buffers to the device, runs one grouped send/recv (`ncclGroupStart`/`ncclGroupEnd`), and
//! copies the results back. Completion is polled against the operation timeout; on timeout the
//! NCCL communicator is aborted and the error is terminal. NCCL's own set-up (communicator
//! creation, the first connection between two ranks) blocks until the peers take part.
//!
//! Point-to-point messages are a (tag, length) header and the payload, one NCCL send each,
//! matched by tag on the receiving side (out-of-order tags are stashed). An NCCL send
//! completes only when the receiver posts the matching receive, so two ranks must not send to
//! each other at the same moment unless one of them receives first.

use std::collections::{HashMap, VecDeque};
use std::os::raw::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DriverError};
use cudarc::nccl::{group_end, group_start, result::NcclError, Comm, Id, ReduceOp};

use crate::error::CommError;
use crate::inproc::assemble;
use crate::stats::{CommStats, StatsCounters};
use crate::{check_peer, check_send_count, Communicator};

/// How long an operation may take before the group is declared broken, by default.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(120);

/// One rank of a group connected with NCCL.
pub struct NcclComm {
    /// `None` once aborted.
    comm: Option<Comm>,
    stream: Arc<CudaStream>,
    rank: usize,
    world_size: usize,
    stats: StatsCounters,
    /// Point-to-point messages that arrived for another tag than the one being received.
    stash: HashMap<(usize, u64), VecDeque<Vec<u8>>>,
    op_timeout: Duration,
    aborted: Option<String>,
}

// SAFETY: an NCCL communicator and its CUDA stream may be used from any thread as long as
// calls on them are not concurrent; every operation of `NcclComm` takes `&mut self`, so they
// never are. (cudarc's `Comm` holds a raw `ncclComm_t` and is therefore not `Send` itself.)
unsafe impl Send for NcclComm {}

impl NcclComm {
    /// Checks that the CUDA driver and libnccl can be loaded, with a message that says what to
    /// install or link when not.
    pub fn check_available() -> Result<(), CommError> {
        check_driver()?;
        check_nccl()
    }

    /// Creates the group's NCCL unique id (on one process, usually the coordinator or rank
    /// 0), to be handed to every rank. The creating process hosts NCCL's bootstrap root, so
    /// it must stay up until all ranks have called [`NcclComm::new`].
    pub fn unique_id() -> Result<[u8; 128], CommError> {
        check_nccl()?;
        let id = guard("creating the NCCL unique id", Id::new)?
            .map_err(|e| nccl_error("creating the NCCL unique id", e))?;
        Ok(id.internal().map(|c| c as u8))
    }

    /// Joins the group as `rank` of `world_size` on CUDA device `device`; blocks until every
    /// rank has joined with the same `unique_id`.
    pub fn new(
        rank: usize,
        world_size: usize,
        unique_id: [u8; 128],
        device: usize,
    ) -> Result<NcclComm, CommError> {
        if rank >= world_size {
            return Err(CommError::InvalidArgument(format!(
                "rank {rank} out of range for world size {world_size}"
            )));
        }
        Self::check_available()?;
        let count = guard("counting CUDA devices", CudaContext::device_count)?
            .map_err(|e| driver_error("counting CUDA devices", e))?;
        if count <= 0 {
            return Err(CommError::NotAvailable(
                "no CUDA device on this machine".into(),
            ));
        }
        if device >= count as usize {
            return Err(CommError::NotAvailable(format!(
                "CUDA device {device} requested, this machine has {count}"
            )));
        }
        let ctx = guard("opening the CUDA device", || CudaContext::new(device))?
            .map_err(|e| driver_error("opening the CUDA device", e))?;
        let stream = ctx.default_stream();
        let id = Id::uninit(unique_id.map(|b| b as c_char));
        let comm = guard("creating the NCCL communicator", || {
            Comm::from_rank(stream.clone(), rank, world_size, id)
        })?
        .map_err(|e| nccl_error("creating the NCCL communicator", e))?;
        tracing::info!(rank, world_size, device, "NCCL group formed");
        Ok(NcclComm {
            comm: Some(comm),
            stream,
            rank,
            world_size,
            stats: StatsCounters::new(world_size),
            stash: HashMap::new(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            aborted: None,
        })
    }

    /// Sets how long one operation may take before the communicator is aborted.
    pub fn with_op_timeout(mut self, op_timeout: Duration) -> Self {
        self.op_timeout = op_timeout;
        self
    }

    fn others(&self) -> Vec<usize> {
        (1..self.world_size)
            .map(|k| (self.rank + k) % self.world_size)
            .collect()
    }

    fn comm(&self) -> Result<&Comm, CommError> {
        match (&self.comm, &self.aborted) {
            (Some(c), None) => Ok(c),
            (_, Some(reason)) => Err(CommError::Aborted {
                reason: reason.clone(),
            }),
            (None, None) => Err(CommError::Aborted {
                reason: "NCCL communicator closed".into(),
            }),
        }
    }

    /// Runs `f`; on failure aborts the communicator so that it is never used out of step.
    fn checked<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, CommError>,
    ) -> Result<T, CommError> {
        let result = f(self);
        if let Err(err) = &result {
            if !matches!(
                err,
                CommError::InvalidArgument(_) | CommError::Aborted { .. }
            ) {
                self.abort(err.to_string());
            }
        }
        result
    }

    fn abort(&mut self, reason: String) {
        tracing::error!(rank = self.rank, %reason, "aborting the NCCL communicator");
        if let Some(comm) = self.comm.take() {
            // cudarc's Drop calls ncclCommAbort and panics if it fails.
            if catch_unwind(AssertUnwindSafe(|| drop(comm))).is_err() {
                tracing::error!(rank = self.rank, "ncclCommAbort failed");
            }
        }
        self.aborted = Some(reason);
    }

    /// Waits until the work queued on the stream so far is done, at most the op timeout.
    fn wait(&self, op: &str) -> Result<(), CommError> {
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| driver_error(op, e))?;
        let deadline = Instant::now() + self.op_timeout;
        let mut pause = Duration::from_micros(20);
        loop {
            if event.try_is_complete().map_err(|e| driver_error(op, e))? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CommError::Nccl {
                    context: op.to_string(),
                    msg: format!(
                        "not complete after {:?}: a peer is dead or stuck; the communicator is aborted",
                        self.op_timeout
                    ),
                });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    fn to_device<T: cudarc::driver::DeviceRepr>(
        &self,
        data: &[T],
        op: &str,
    ) -> Result<CudaSlice<T>, CommError> {
        self.stream
            .clone_htod(data)
            .map_err(|e| driver_error(op, e))
    }

    /// Grouped send/recv: `sends[i]` to `peers[i]`, `recvs[i]` from `peers[i]` (empty buffers
    /// are skipped).
    fn exchange<T: cudarc::nccl::NcclType + cudarc::driver::DeviceRepr>(
        &self,
        peers: &[usize],
        sends: &[Option<CudaSlice<T>>],
        recvs: &mut [Option<CudaSlice<T>>],
        op: &str,
    ) -> Result<(), CommError> {
        let comm = self.comm()?;
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| driver_error(op, e))?;
        group_start().map_err(|e| nccl_error(op, e))?;
        let mut queued = Ok(());
        for ((&peer, send), recv) in peers.iter().zip(sends).zip(recvs.iter_mut()) {
            if let Some(buf) = send {
                queued = comm.send(buf, peer as i32).map_err(|e| nccl_error(op, e));
            }
            if queued.is_ok() {
                if let Some(buf) = recv {
                    queued = comm
                        .recv(buf, peer as i32)
                        .map(|_| ())
                        .map_err(|e| nccl_error(op, e));
                }
            }
            if queued.is_err() {
                break;
            }
        }
        // Always close the group, even when queueing failed.
        let ended = group_end().map(|_| ()).map_err(|e| nccl_error(op, e));
        queued.and(ended)?;
        self.wait(op)
    }

    /// All-to-all of one u64 per peer: how many bytes each rank is about to send us.
    fn exchange_counts(&self, counts: &[u64], peers: &[usize]) -> Result<Vec<u64>, CommError> {
        let op = "exchanging message sizes";
        let sends = peers
            .iter()
            .map(|&p| self.to_device(&[counts[p]], op).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        let mut recvs = peers
            .iter()
            .map(|_| self.stream.alloc_zeros::<u64>(1).map(Some))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| driver_error(op, e))?;
        self.exchange(peers, &sends, &mut recvs, op)?;
        recvs
            .iter()
            .map(|r| match r {
                Some(buf) => self
                    .stream
                    .clone_dtoh(buf)
                    .map_err(|e| driver_error(op, e))
                    .map(|v| v.first().copied().unwrap_or(0)),
                None => Ok(0),
            })
            .collect()
    }

    fn all_to_all_inner(&mut self, mut send: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, CommError> {
        let op = "all_to_all_v";
        let others = self.others();
        let counts: Vec<u64> = send.iter().map(|b| b.len() as u64).collect();
        let incoming = self.exchange_counts(&counts, &others)?;
        let own = std::mem::take(&mut send[self.rank]);
        let sends = others
            .iter()
            .map(|&p| match send[p].is_empty() {
                true => Ok(None),
                false => self.to_device(&send[p], op).map(Some),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut recvs = incoming
            .iter()
            .map(|&n| match n {
                0 => Ok(None),
                n => self.stream.alloc_zeros::<u8>(n as usize).map(Some),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| driver_error(op, e))?;
        self.exchange(&others, &sends, &mut recvs, op)?;
        let mut got = Vec::with_capacity(others.len());
        for (&peer, recv) in others.iter().zip(&recvs) {
            let data = match recv {
                Some(buf) => self
                    .stream
                    .clone_dtoh(buf)
                    .map_err(|e| driver_error(op, e))?,
                None => Vec::new(),
            };
            self.stats.record_sent(peer, send[peer].len());
            self.stats.record_received(peer, data.len());
            got.push(data);
        }
        Ok(assemble(self.rank, own, &others, got))
    }

    /// One point-to-point message: a (tag, length) header, then the payload.
    fn send_inner(&mut self, peer: usize, tag: u64, data: &[u8]) -> Result<(), CommError> {
        let op = "send";
        let header = self.to_device(&[tag, data.len() as u64], op)?;
        let mut none: [Option<CudaSlice<u64>>; 1] = [None];
        self.exchange(&[peer], &[Some(header)], &mut none, op)?;
        if !data.is_empty() {
            let payload = self.to_device(data, op)?;
            let mut none: [Option<CudaSlice<u8>>; 1] = [None];
            self.exchange(&[peer], &[Some(payload)], &mut none, op)?;
        }
        self.stats.record_sent(peer, data.len());
        Ok(())
    }

    fn recv_inner(&mut self, peer: usize, tag: u64) -> Result<Vec<u8>, CommError> {
        let op = "recv";
        loop {
            if let Some(data) = self
                .stash
                .get_mut(&(peer, tag))
                .and_then(VecDeque::pop_front)
            {
                return Ok(data);
            }
            let header = self
                .stream
                .alloc_zeros::<u64>(2)
                .map_err(|e| driver_error(op, e))?;
            let mut recvs = [Some(header)];
            self.exchange(&[peer], &[None::<CudaSlice<u64>>], &mut recvs, op)?;
            let header = match &recvs[0] {
                Some(buf) => self
                    .stream
                    .clone_dtoh(buf)
                    .map_err(|e| driver_error(op, e))?,
                None => Vec::new(),
            };
            let (their_tag, len) = match header.as_slice() {
                [t, l] => (*t, *l),
                _ => return Err(CommError::protocol(peer, "short point-to-point header")),
            };
            let data = if len == 0 {
                Vec::new()
            } else {
                let buf = self
                    .stream
                    .alloc_zeros::<u8>(len as usize)
                    .map_err(|e| driver_error(op, e))?;
                let mut recvs = [Some(buf)];
                self.exchange(&[peer], &[None::<CudaSlice<u8>>], &mut recvs, op)?;
                match &recvs[0] {
                    Some(buf) => self
                        .stream
                        .clone_dtoh(buf)
                        .map_err(|e| driver_error(op, e))?,
                    None => Vec::new(),
                }
            };
            self.stats.record_received(peer, data.len());
            if their_tag == tag {
                return Ok(data);
            }
            self.stash
                .entry((peer, their_tag))
                .or_default()
                .push_back(data);
        }
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_to_all_v(&mut self, send: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, CommError> {
        check_send_count(&send, self.world_size)?;
        self.checked(|c| c.all_to_all_inner(send))
    }

    fn all_gather(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        let send = vec![data.to_vec(); self.world_size];
        self.checked(|c| c.all_to_all_inner(send))
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        self.checked(|c| {
            let op = "barrier";
            let one = c.to_device(&[1u8], op)?;
            let mut sum = c
                .stream
                .alloc_zeros::<u8>(1)
                .map_err(|e| driver_error(op, e))?;
            c.stream
                .context()
                .bind_to_thread()
                .map_err(|e| driver_error(op, e))?;
            c.comm()?
                .all_reduce(&one, &mut sum, &ReduceOp::Sum)
                .map_err(|e| nccl_error(op, e))?;
            c.wait(op)
        })
    }

    fn send(&mut self, peer: usize, tag: u64, data: &[u8]) -> Result<(), CommError> {
        check_peer(peer, self.world_size)?;
        if peer == self.rank {
            self.stash
                .entry((peer, tag))
                .or_default()
                .push_back(data.to_vec());
            return Ok(());
        }
        self.checked(|c| c.send_inner(peer, tag, data))
    }

    fn recv(&mut self, peer: usize, tag: u64) -> Result<Vec<u8>, CommError> {
        check_peer(peer, self.world_size)?;
        if peer == self.rank {
            return self
                .stash
                .get_mut(&(peer, tag))
                .and_then(VecDeque::pop_front)
                .ok_or_else(|| {
                    CommError::InvalidArgument(format!(
                        "recv from ourselves with tag {tag}, but nothing was sent"
                    ))
                });
        }
        self.checked(|c| c.recv_inner(peer, tag))
    }

    fn stats(&self) -> CommStats {
        self.stats.snapshot()
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if let Some(comm) = self.comm.take() {
            if catch_unwind(AssertUnwindSafe(|| drop(comm))).is_err() {
                tracing::error!(rank = self.rank, "ncclCommAbort failed while closing");
            }
        }
    }
}

/// Runs a cudarc call that may panic (its dynamic loader panics when a library is missing)
/// and turns a panic into `NotAvailable`.
fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, CommError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic without a message".into());
        CommError::NotAvailable(format!("{what}: {msg}"))
    })
}

/// With candle's CUDA backend in the same binary (the `cuda-linked` feature, set by the
/// binary's `cuda` feature), cudarc is linked against libcuda and libnccl instead of loading
/// them at run time: a process that started has both, so there is nothing to look for.
#[cfg(feature = "cuda-linked")]
fn check_driver() -> Result<(), CommError> {
    Ok(())
}

#[cfg(feature = "cuda-linked")]
fn check_nccl() -> Result<(), CommError> {
    Ok(())
}

/// Whether cudarc's run-time loader will find libnccl (`true` where it is linked).
#[cfg(all(feature = "cuda-linked", test))]
pub(crate) fn nccl_present() -> bool {
    true
}

#[cfg(not(feature = "cuda-linked"))]
pub(crate) fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen libnccl under the names cudarc will use.
    guard("looking for libnccl", || unsafe {
        cudarc::nccl::sys::is_culib_present()
    })
    .unwrap_or(false)
}

#[cfg(not(feature = "cuda-linked"))]
fn check_driver() -> Result<(), CommError> {
    // SAFETY: only tries to dlopen the driver library under its usual names.
    let present = guard("looking for the CUDA driver", || unsafe {
        cudarc::driver::sys::is_culib_present()
    })?;
    if present {
        Ok(())
    } else {
        Err(CommError::NotAvailable(
            "the CUDA driver library (libcuda.so / libcuda.so.1) is not installed: no NVIDIA driver on this machine".into(),
        ))
    }
}

#[cfg(not(feature = "cuda-linked"))]
fn check_nccl() -> Result<(), CommError> {
    if nccl_present() {
        return Ok(());
    }
    // SAFETY: loading NCCL runs no user code beyond its initialisers; the handle is dropped.
    let so2 = unsafe { libloading::Library::new("libnccl.so.2") }.is_ok();
    let msg = if so2 {
        "libnccl.so.2 is installed, but cudarc only loads libnccl.so (or .so.1/.so.9-.so.12): \
         create the link `ln -s libnccl.so.2 libnccl.so` in a directory on LD_LIBRARY_PATH \
         (the libnccl-dev package installs it)"
            .to_string()
    } else {
        format!(
            "libnccl not found (tried {}); install NCCL (libnccl2 and libnccl-dev, or the \
             nvidia-nccl-cu12 wheel plus a libnccl.so link to its libnccl.so.2) and put its \
             directory on LD_LIBRARY_PATH",
            cudarc::get_lib_name_candidates("nccl").join(", ")
        )
    };
    Err(CommError::NotAvailable(msg))
}

fn nccl_error(context: &str, e: NcclError) -> CommError {
    CommError::Nccl {
        context: context.to_string(),
        msg: format!("{:?}", e.0),
    }
}

fn driver_error(context: &str, e: DriverError) -> CommError {
    CommError::Nccl {
        context: context.to_string(),
        msg: format!("CUDA driver: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without libnccl (CI, developers' CPU machines) every entry point reports
    /// `NotAvailable` instead of panicking; where NCCL is installed, the id can be created.
    #[test]
    fn missing_nccl_is_not_available_not_a_panic() {
        let present = nccl_present();
        match NcclComm::unique_id() {
            Err(CommError::NotAvailable(msg)) => {
                assert!(!present);
                assert!(msg.contains("libnccl"), "{msg}");
            }
            Ok(id) => assert!(present && id.iter().any(|&b| b != 0)),
            Err(other) => panic!("unexpected error: {other}"),
        }
        if !present {
            match NcclComm::new(0, 1, [0; 128], 0) {
                Err(CommError::NotAvailable(_)) => {}
                Err(other) => panic!("unexpected error: {other}"),
                Ok(_) => panic!("created a communicator without NCCL"),
            }
        }
    }
}
