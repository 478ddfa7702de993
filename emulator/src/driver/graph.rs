//! Stream capture and CUDA graphs: `cuStreamBeginCapture_v2`, `cuStreamEndCapture`,
//! `cuGraphInstantiateWithFlags`, `cuGraphLaunch`, `cuGraphUpload`, `cuGraphExecDestroy`,
//! `cuGraphDestroy` (and the capture rules the other stream calls follow, in `super`).
//!
//! # Model
//! Work runs when it is enqueued (see `super`), so a capture is a list: while a stream captures,
//! the work enqueued on it (kernel launches, async memsets and copies, graph launches) is
//! checked as it would be for running, then appended to the capture instead of run. The list
//! is in API call order, which is a valid topological order of the graph the real driver would
//! build (a node can only depend on nodes already captured). `cuGraphLaunch` runs the nodes in
//! that order on the launch stream (or, on a capturing stream, appends them: a child graph).
//!
//! Kernel nodes keep a copy of the parameter bytes taken at capture, as the real driver does.
//! Copy nodes keep the host address and read or write it when the graph runs. A node that
//! touches memory freed since its capture fails the launch with 700
//! (`CUDA_ERROR_ILLEGAL_ADDRESS`, sticky, as an illegal access of a running graph is on a GPU);
//! kernels are checked by the checkers as any launch.
//!
//! The rules of the CUDA Programming Guide's "Prohibited and Unhandled Operations" (stream
//! capture) that the emulator enforces, each returning the code named and invalidating the
//! capture(s) involved (later work on them returns 901 `STREAM_CAPTURE_INVALIDATED`, and
//! `cuStreamEndCapture` returns 901 with a null graph):
//! - synchronising or querying a capturing stream, or an event last recorded in an active
//!   capture (`cuStreamSynchronize`, `cuStreamQuery`, `cuEventSynchronize`, `cuEventQuery`):
//!   900 `STREAM_CAPTURE_UNSUPPORTED`; `cuCtxSynchronize` while any stream captures: 900, every
//!   capture invalidated;
//! - "potentially unsafe" calls (the synchronous `cuMemAlloc_v2`, `cuMemFree_v2`, `cuMemset*_v2`,
//!   `cuMemcpy*_v2`) from a thread the capture mode prohibits them in (`GLOBAL`: any thread;
//!   `THREAD_LOCAL`: the capturing thread; `RELAXED`: none): 900;
//! - waiting, on a capturing stream, on an event recorded outside any capture (without
//!   `CU_EVENT_WAIT_EXTERNAL`): 905 `STREAM_CAPTURE_ISOLATION` ("dependency created on uncaptured
//!   work"); on an event of another active capture: 902 `STREAM_CAPTURE_MERGE` (both invalidated).
//!   An event never recorded stands for no work and is no dependency;
//! - waiting (outside capture), querying or synchronising on an event whose last record was in a
//!   capture that has ended: 1 `INVALID_VALUE` (it represents no work that runs).
//!
//! Not modelled, refused with 801 `NOT_SUPPORTED` and a message, and the capture invalidated
//! (the real driver would have built a graph the emulator cannot replay): a non-capturing
//! stream waiting on an event of an active capture (a fork into a second stream), and
//! `cuMemAllocAsync`/`cuMemFreeAsync` on a capturing stream (graph memory nodes).
use super::*;
use std::thread::ThreadId;

/// `CU_STREAM_CAPTURE_MODE_GLOBAL`.
pub(super) const MODE_GLOBAL: u32 = 0;
/// `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`.
pub(super) const MODE_THREAD_LOCAL: u32 = 1;
/// `CU_STREAM_CAPTURE_MODE_RELAXED`.
pub(super) const MODE_RELAXED: u32 = 2;

pub(super) const CUDA_ERROR_ILLEGAL_ADDRESS: CUresult = 700;
pub(super) const CUDA_ERROR_ILLEGAL_STATE: CUresult = 401;
pub(super) const CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: CUresult = 900;
pub(super) const CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: CUresult = 901;
pub(super) const CUDA_ERROR_STREAM_CAPTURE_MERGE: CUresult = 902;
pub(super) const CUDA_ERROR_STREAM_CAPTURE_ISOLATION: CUresult = 905;
pub(super) const CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD: CUresult = 908;

/// `CUgraphInstantiate_flags`: AUTO_FREE_ON_LAUNCH, UPLOAD, DEVICE_LAUNCH, USE_NODE_PRIORITY.
const INSTANTIATE_AUTO_FREE: u64 = 1;
const INSTANTIATE_DEVICE_LAUNCH: u64 = 4;
const INSTANTIATE_ALL: u64 = 0xf;

/// One piece of captured work.
#[derive(Clone, Debug)]
pub(super) enum Node {
    /// A kernel: its function handle, launch shape and parameter bytes (copied at capture).
    Kernel {
        func: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        params: Vec<Vec<u8>>,
    },
    /// `count` repetitions of `pattern` (1, 2 or 4 bytes) at `dst`.
    Memset {
        dst: u64,
        pattern: Vec<u8>,
        count: usize,
    },
    /// Host `src` to device `dst`.
    Htod { dst: u64, src: u64, bytes: usize },
    /// Device `src` to host `dst`.
    Dtoh { dst: u64, src: u64, bytes: usize },
    /// Device to device.
    Dtod { dst: u64, src: u64, bytes: usize },
    /// An external event record node (`cuEventRecordWithFlags(.., CU_EVENT_RECORD_EXTERNAL)`):
    /// records the event, as outside capture, when the graph runs.
    EventRecord(u64),
}

/// A stream's capture sequence (keyed by its origin stream in [`Driver::captures`]).
#[derive(Debug)]
pub(super) struct Capture {
    /// Unique per process (events name the capture they were last recorded in by it).
    pub id: u64,
    pub mode: u32,
    pub thread: ThreadId,
    pub nodes: Vec<Node>,
    pub invalidated: bool,
}

/// Where an event's last record happened (CUDA's "captured event" or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recorded {
    Never,
    /// Outside any capture: its work has run.
    Stream,
    /// In the capture with this id.
    Capture(u64),
}

fn invalidated() -> Fail {
    Fail::msg(
        CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        "the stream's capture was invalidated by an earlier error",
    )
}

impl Driver {
    /// The capture the stream is in, by capture id (active ones only).
    pub(super) fn capture_by_id(&mut self, id: u64) -> Option<&mut Capture> {
        self.captures.values_mut().find(|c| c.id == id)
    }

    /// Invalidates the capture of `stream`, if any.
    pub(super) fn invalidate(&mut self, stream: u64) {
        if let Some(c) = self.captures.get_mut(&stream) {
            c.invalidated = true;
        }
    }

    /// Fails a potentially unsafe call (a synchronous allocation, free, memset or copy) with 900
    /// where a capture's mode prohibits it for the calling thread, invalidating that capture.
    pub(super) fn refuse_unsafe_call(&mut self, what: &str) -> Res<()> {
        let me = std::thread::current().id();
        let mut hit = false;
        for c in self.captures.values_mut() {
            let prohibits = match c.mode {
                MODE_GLOBAL => true,
                MODE_THREAD_LOCAL => c.thread == me,
                _ => false,
            };
            if prohibits {
                c.invalidated = true;
                hit = true;
            }
        }
        if hit {
            return Err(Fail::msg(
                CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                format!(
                    "{what} is not permitted while a stream captures (a GLOBAL capture, or a \
                     THREAD_LOCAL one of this thread); the capture is invalidated"
                ),
            ));
        }
        Ok(())
    }

    /// Fails (900, invalidating the capture) when `stream` captures: it cannot be synchronised
    /// or queried.
    pub(super) fn refuse_if_capturing(&mut self, stream: Handle) -> Res<()> {
        let s = stream as u64;
        if let Some(c) = self.captures.get_mut(&s) {
            c.invalidated = true;
            return Err(Fail::msg(
                CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                "the stream is capturing (it cannot be synchronised or queried); the capture is \
                 invalidated",
            ));
        }
        Ok(())
    }

    /// Fails when the event was last recorded in a capture: 900 (invalidating it) while that
    /// capture is active, 1 once it has ended.
    pub(super) fn refuse_captured_event(&mut self, event: Handle) -> Res<()> {
        let recorded = event_of(self, event)?.recorded;
        if let Recorded::Capture(id) = recorded {
            if let Some(c) = self.capture_by_id(id) {
                c.invalidated = true;
                return Err(Fail::msg(
                    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                    "the event was recorded in an active capture (it cannot be synchronised or \
                     queried); the capture is invalidated",
                ));
            }
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_VALUE,
                "the event was last recorded in a capture that has ended (it stands for no work \
                 that runs; record it again outside capture)",
            ));
        }
        Ok(())
    }

    /// Fails (801, invalidating the capture) a stream-ordered allocation or free on a capturing
    /// stream: graph memory nodes are not modelled.
    pub(super) fn refuse_graph_memory(&mut self, stream: Handle, what: &str) -> Res<()> {
        if let Some(c) = self.captures.get_mut(&(stream as u64)) {
            c.invalidated = true;
            return Err(Fail::msg(
                CUDA_ERROR_NOT_SUPPORTED,
                format!(
                    "{what} on a capturing stream (a graph memory node) is not modelled by the \
                     emulator; the capture is invalidated"
                ),
            ));
        }
        Ok(())
    }

    /// Stream work: recorded into the stream's capture when it captures (after `check`), else
    /// run now.
    pub(super) fn enqueue(&mut self, stream: Handle, node: Node) -> Res<()> {
        self.check_stream(stream)?;
        match self.captures.get(&(stream as u64)) {
            Some(c) if c.invalidated => Err(invalidated()),
            Some(_) => {
                self.check_node(&node)?;
                let c = self
                    .captures
                    .get_mut(&(stream as u64))
                    .expect("looked up above");
                c.nodes.push(node);
                Ok(())
            }
            None => self.run_node(&node),
        }
    }

    /// The checks a node's call makes before it would run (arguments, ranges, handles).
    fn check_node(&self, node: &Node) -> Res<()> {
        match node {
            Node::Kernel { .. } | Node::EventRecord(_) => Ok(()),
            Node::Memset {
                dst,
                pattern,
                count,
            } => {
                let unit = pattern.len() as u64;
                if *count == 0 {
                    return Ok(());
                }
                if dst % unit != 0 {
                    return Err(Fail::msg(
                        CUDA_ERROR_INVALID_VALUE,
                        format!("destination {dst:#x} is not aligned to {unit} bytes"),
                    ));
                }
                let bytes = (*count as u64).checked_mul(unit).ok_or_else(|| {
                    Fail::msg(CUDA_ERROR_INVALID_VALUE, "element count overflows")
                })?;
                self.check_device_range("destination", *dst, bytes)
            }
            Node::Htod { dst, src, bytes } if *bytes > 0 => {
                self.check_device_range("destination", *dst, *bytes as u64)?;
                self.check_host("source", *src, *bytes as u64)
            }
            Node::Dtoh { dst, src, bytes } if *bytes > 0 => {
                self.check_device_range("source", *src, *bytes as u64)?;
                self.check_host("destination", *dst, *bytes as u64)
            }
            Node::Dtod { dst, src, bytes } if *bytes > 0 => {
                self.check_device_range("source", *src, *bytes as u64)?;
                self.check_device_range("destination", *dst, *bytes as u64)
            }
            _ => Ok(()),
        }
    }

    /// Runs one node now.
    pub(super) fn run_node(&mut self, node: &Node) -> Res<()> {
        match node {
            Node::Kernel {
                func,
                grid,
                block,
                shared,
                params,
            } => run_kernel(self, h(*func), *grid, *block, *shared, params),
            Node::Memset {
                dst,
                pattern,
                count,
            } => self.memset(*dst, pattern, *count),
            // SAFETY: the caller of the capturing (or running) copy vouched for the host range.
            Node::Htod { dst, src, bytes } => unsafe {
                self.htod(*dst, *src as *const c_void, *bytes)
            },
            // SAFETY: as above.
            Node::Dtoh { dst, src, bytes } => unsafe {
                self.dtoh(*dst as *mut c_void, *src, *bytes)
            },
            Node::Dtod { dst, src, bytes } => self.dtod(*dst, *src, *bytes),
            Node::EventRecord(e) => {
                if let Some(ev) = self.events.get_mut(e) {
                    ev.recorded = Recorded::Stream;
                }
                Ok(())
            }
        }
    }

    /// Runs a graph's nodes in order. A node that fails stops the launch; a memory node whose
    /// range is no longer allocated fails with 700 (sticky), as an illegal access would.
    fn run_graph(&mut self, nodes: &[Node]) -> Res<()> {
        for (i, node) in nodes.iter().enumerate() {
            if let Err(mut fail) = self.run_node(node) {
                if !matches!(node, Node::Kernel { .. } | Node::EventRecord(_))
                    && fail.code == CUDA_ERROR_INVALID_VALUE
                {
                    fail = Fail::msg(
                        CUDA_ERROR_ILLEGAL_ADDRESS,
                        format!(
                            "graph node {i} ({}): {}",
                            node_kind(node),
                            fail.message.unwrap_or_default()
                        ),
                    );
                    self.poison(&fail);
                }
                return Err(fail);
            }
        }
        Ok(())
    }
}

fn node_kind(node: &Node) -> &'static str {
    match node {
        Node::Kernel { .. } => "kernel",
        Node::Memset { .. } => "memset",
        Node::Htod { .. } => "host-to-device copy",
        Node::Dtoh { .. } => "device-to-host copy",
        Node::Dtod { .. } => "device-to-device copy",
        Node::EventRecord(_) => "event record",
    }
}

/// `cuStreamBeginCapture_v2`: modes GLOBAL, THREAD_LOCAL, RELAXED; the legacy stream cannot
/// capture (900); a stream already capturing is 401 (`CUDA_ERROR_ILLEGAL_STATE`).
#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(stream: Handle, mode: c_uint) -> CUresult {
    entry("cuStreamBeginCapture_v2", || {
        if mode > MODE_RELAXED {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_VALUE,
                format!("capture mode {mode} (GLOBAL 0, THREAD_LOCAL 1, RELAXED 2)"),
            ));
        }
        with_stream(stream, |d| {
            let s = stream as u64;
            if s == 0 || s == STREAM_LEGACY {
                return Err(Fail::msg(
                    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                    "the legacy (NULL) stream cannot be captured",
                ));
            }
            if d.captures.contains_key(&s) {
                return Err(Fail::msg(
                    CUDA_ERROR_ILLEGAL_STATE,
                    "the stream is already capturing",
                ));
            }
            let id = d.handle(0);
            d.captures.insert(
                s,
                Capture {
                    id,
                    mode,
                    thread: std::thread::current().id(),
                    nodes: Vec::new(),
                    invalidated: false,
                },
            );
            Ok(())
        })
    })
}

/// `cuStreamEndCapture`: the captured graph; null and 901 when the capture was invalidated
/// (the stream leaves capture either way); 401 when the stream is not capturing; 908 from
/// another thread than the one that began a non-RELAXED capture (the capture goes on).
#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(stream: Handle, graph: *mut Handle) -> CUresult {
    entry("cuStreamEndCapture", || {
        if graph.is_null() {
            return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
        }
        let result = with_stream(stream, |d| {
            let s = stream as u64;
            let Some(c) = d.captures.get(&s) else {
                return Err(Fail::msg(
                    CUDA_ERROR_ILLEGAL_STATE,
                    "the stream is not capturing",
                ));
            };
            if c.mode != MODE_RELAXED && c.thread != std::thread::current().id() {
                return Err(Fail::msg(
                    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD,
                    "a GLOBAL or THREAD_LOCAL capture must end on the thread that began it",
                ));
            }
            let c = d.captures.remove(&s).expect("looked up above");
            if c.invalidated {
                return Ok(None);
            }
            let g = d.handle(TAG_GRAPH);
            d.graphs.insert(g, c.nodes);
            Ok(Some(g))
        })?;
        match result {
            Some(g) => unsafe { put(graph, h(g)) },
            None => {
                unsafe { put(graph, std::ptr::null_mut()) }?;
                Err(Fail::msg(
                    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                    "the capture was invalidated by an earlier error: no graph",
                ))
            }
        }
    })
}

/// `cuGraphInstantiateWithFlags`: an executable copy of the graph (the graph may be destroyed
/// or reused afterwards). Flags: AUTO_FREE_ON_LAUNCH 1, UPLOAD 2, DEVICE_LAUNCH 4,
/// USE_NODE_PRIORITY 8; DEVICE_LAUNCH with AUTO_FREE_ON_LAUNCH, or an unknown bit, is
/// `CUDA_ERROR_INVALID_VALUE`, as the real driver answers.
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut Handle,
    graph: Handle,
    flags: u64,
) -> CUresult {
    entry("cuGraphInstantiateWithFlags", || {
        if exec.is_null() {
            return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
        }
        if flags & !INSTANTIATE_ALL != 0
            || flags & (INSTANTIATE_AUTO_FREE | INSTANTIATE_DEVICE_LAUNCH)
                == INSTANTIATE_AUTO_FREE | INSTANTIATE_DEVICE_LAUNCH
        {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_VALUE,
                format!("instantiate flags {flags:#x}"),
            ));
        }
        let e = with_ctx(|d| {
            let nodes = d.graphs.get(&(graph as u64)).cloned().ok_or_else(|| {
                Fail::msg(
                    CUDA_ERROR_INVALID_HANDLE,
                    format!("{:#x} is not a live graph", graph as u64),
                )
            })?;
            let e = d.handle(TAG_GRAPH_EXEC);
            d.execs.insert(e, nodes);
            Ok(e)
        })?;
        unsafe { put(exec, h(e)) }
    })
}

fn exec_nodes(d: &Driver, exec: Handle) -> Res<Vec<Node>> {
    d.execs.get(&(exec as u64)).cloned().ok_or_else(|| {
        Fail::msg(
            CUDA_ERROR_INVALID_HANDLE,
            format!("{:#x} is not a live graph exec", exec as u64),
        )
    })
}

/// `cuGraphLaunch`: runs the exec's nodes in order on `stream`; on a capturing stream, appends
/// them to the capture (a child graph).
#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: Handle, stream: Handle) -> CUresult {
    entry("cuGraphLaunch", || {
        with_stream(stream, |d| {
            let nodes = exec_nodes(d, exec)?;
            match d.captures.get_mut(&(stream as u64)) {
                Some(c) if c.invalidated => Err(invalidated()),
                Some(c) => {
                    c.nodes.extend(nodes);
                    Ok(())
                }
                None => d.run_graph(&nodes),
            }
        })
    })
}

/// `cuGraphUpload`: nothing to upload (checks its handles).
#[no_mangle]
pub unsafe extern "C" fn cuGraphUpload(exec: Handle, stream: Handle) -> CUresult {
    entry("cuGraphUpload", || {
        with_stream(stream, |d| exec_nodes(d, exec).map(|_| ()))
    })
}

/// `cuGraphExecDestroy`. Succeeds quietly in an unusable context (see the module documentation
/// of `driver`).
#[no_mangle]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: Handle) -> CUresult {
    entry("cuGraphExecDestroy", || {
        with_ctx_teardown(|d| match d.execs.remove(&(exec as u64)) {
            Some(_) => Ok(()),
            None => Err(Fail::msg(
                CUDA_ERROR_INVALID_HANDLE,
                format!("{:#x} is not a live graph exec", exec as u64),
            )),
        })
    })
}

/// `cuGraphDestroy`. Succeeds quietly in an unusable context.
#[no_mangle]
pub unsafe extern "C" fn cuGraphDestroy(graph: Handle) -> CUresult {
    entry("cuGraphDestroy", || {
        with_ctx_teardown(|d| match d.graphs.remove(&(graph as u64)) {
            Some(_) => Ok(()),
            None => Err(Fail::msg(
                CUDA_ERROR_INVALID_HANDLE,
                format!("{:#x} is not a live graph", graph as u64),
            )),
        })
    })
}
