//! The job scheduler: a fixed pool of `QVM_REMOTE_MAX_CONCURRENT` workers fed from one
//! bounded FIFO queue per VM, served round-robin, so a VM that floods jobs gets its
//! share of the slots and no more, and dom0's thread count never depends on what a VM
//! sends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

/// Most jobs one VM may have waiting for a slot; past it new jobs are refused.
pub const MAX_QUEUED_PER_VM: usize = 64;

/// A unit of work.
pub type Task = Box<dyn FnOnce() + Send + 'static>;

struct State {
    queues: HashMap<String, VecDeque<Task>>,
    /// VMs with queued work, in the order they will be served next.
    order: VecDeque<String>,
    running: usize,
    closed: bool,
}

/// The worker pool.
pub struct Scheduler {
    state: Mutex<State>,
    ready: Condvar,
    idle: Condvar,
}

/// Why a task was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The VM already has `MAX_QUEUED_PER_VM` jobs waiting.
    Full,
    /// The daemon is shutting down.
    Closed,
}

impl Scheduler {
    /// Starts `workers` worker threads.
    pub fn start(workers: usize) -> std::io::Result<Arc<Scheduler>> {
        let s = Arc::new(Scheduler {
            state: Mutex::new(State {
                queues: HashMap::new(),
                order: VecDeque::new(),
                running: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            idle: Condvar::new(),
        });
        for i in 0..workers.max(1) {
            let s2 = Arc::clone(&s);
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || s2.work())?;
        }
        Ok(s)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Queues a task for `vm`.
    pub fn submit(&self, vm: &str, task: Task) -> Result<(), QueueError> {
        let mut st = self.lock();
        if st.closed {
            return Err(QueueError::Closed);
        }
        let q = st.queues.entry(vm.to_string()).or_default();
        if q.len() >= MAX_QUEUED_PER_VM {
            return Err(QueueError::Full);
        }
        q.push_back(task);
        if !st.order.iter().any(|v| v == vm) {
            st.order.push_back(vm.to_string());
        }
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// Jobs waiting for a slot, for one VM.
    pub fn queued(&self, vm: &str) -> usize {
        self.lock().queues.get(vm).map_or(0, VecDeque::len)
    }

    /// Stops taking tasks; queued ones are dropped (their jobs stay journalled and are
    /// reported `interrupted` at the next start).
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.queues.clear();
        st.order.clear();
        drop(st);
        self.ready.notify_all();
    }

    /// Waits until no task is running.
    pub fn wait_idle(&self, limit: std::time::Duration) -> bool {
        let st = self.lock();
        let res = self
            .idle
            .wait_timeout_while(st, limit, |st| st.running > 0 || !st.order.is_empty());
        match res {
            Ok((_, t)) => !t.timed_out(),
            Err(_) => false,
        }
    }

    fn next(&self) -> Option<Task> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            if let Some(vm) = st.order.pop_front() {
                let task = st.queues.get_mut(&vm).and_then(VecDeque::pop_front);
                if st.queues.get(&vm).is_some_and(|q| !q.is_empty()) {
                    st.order.push_back(vm);
                } else {
                    st.queues.remove(&vm);
                }
                if let Some(t) = task {
                    st.running += 1;
                    return Some(t);
                }
                continue;
            }
            st = match self.ready.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    fn work(&self) {
        while let Some(task) = self.next() {
            task();
            let mut st = self.lock();
            st.running -= 1;
            drop(st);
            self.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_flooding_vm_gets_its_share_not_all_slots() {
        let s = Scheduler::start(1).unwrap();
        let (tx, rx) = mpsc::channel();
        // Hold the only worker so the queues fill before anything runs.
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        s.submit(
            "gate",
            Box::new(move || {
                let _ = gate_rx.recv();
            }),
        )
        .unwrap();
        for i in 0..10 {
            let tx = tx.clone();
            s.submit(
                "flood",
                Box::new(move || tx.send(format!("flood{i}")).unwrap()),
            )
            .unwrap();
        }
        let tx2 = tx.clone();
        s.submit("quiet", Box::new(move || tx2.send("quiet".into()).unwrap()))
            .unwrap();
        gate_tx.send(()).unwrap();
        let order: Vec<String> = (0..11).map(|_| rx.recv().unwrap()).collect();
        let pos = order.iter().position(|s| s == "quiet").unwrap();
        assert!(pos <= 1, "quiet VM waited behind the flood: {order:?}");
    }

    #[test]
    fn queues_are_bounded_and_concurrency_is_capped() {
        let s = Scheduler::start(3).unwrap();
        let live = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut refused = 0;
        for _ in 0..(MAX_QUEUED_PER_VM + 20) {
            let (l, p) = (Arc::clone(&live), Arc::clone(&peak));
            let r = s.submit(
                "vm",
                Box::new(move || {
                    let n = l.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(n, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(20));
                    l.fetch_sub(1, Ordering::SeqCst);
                }),
            );
            if r == Err(QueueError::Full) {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert!(s.wait_idle(Duration::from_secs(20)));
        assert!(peak.load(Ordering::SeqCst) <= 3);
        s.close();
        assert_eq!(s.submit("vm", Box::new(|| {})), Err(QueueError::Closed));
    }
}
