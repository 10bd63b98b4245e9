//! A fixed set of named threads taking jobs from one bounded queue: the chunk read-ahead of
//! the cache and the hashing/compression of the push. Dropping the pool closes the queue;
//! the threads finish the job in hand and are joined.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, ThreadId};

/// See the module documentation.
pub struct WorkerPool<J: Send + 'static> {
    jobs: Option<SyncSender<J>>,
    threads: Vec<JoinHandle<()>>,
    ids: Vec<ThreadId>,
}

/// Why a job was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<J> {
    /// The queue is full (only from [`WorkerPool::try_submit`]).
    Full(J),
    /// Every worker has stopped.
    Closed(J),
}

impl<J: Send + 'static> WorkerPool<J> {
    /// `count` threads named `{name}-{i}`; worker `i` runs `make_worker(i)` on each job it
    /// takes (the closure may keep state between jobs, e.g. a buffer). At most `queue` jobs
    /// wait besides those in hand.
    pub fn new<W>(
        name: &str,
        count: usize,
        queue: usize,
        make_worker: impl Fn(usize) -> W,
    ) -> std::io::Result<Self>
    where
        W: FnMut(J) + Send + 'static,
    {
        let (jobs, receiver) = sync_channel::<J>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let receiver = receiver.clone();
            let mut work = make_worker(i);
            let thread = thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    while let Some(job) = next_job(&receiver) {
                        work(job);
                    }
                })?;
            threads.push(thread);
        }
        let ids = threads.iter().map(|t| t.thread().id()).collect();
        Ok(WorkerPool {
            jobs: Some(jobs),
            threads,
            ids,
        })
    }

    /// Queues a job, waiting while the queue is full.
    pub fn submit(&self, job: J) -> Result<(), Refused<J>> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|err| Refused::Closed(err.0)),
            None => Err(Refused::Closed(job)),
        }
    }

    /// Queues a job unless the queue is full.
    pub fn try_submit(&self, job: J) -> Result<(), Refused<J>> {
        match &self.jobs {
            Some(jobs) => jobs.try_send(job).map_err(|err| match err {
                TrySendError::Full(job) => Refused::Full(job),
                TrySendError::Disconnected(job) => Refused::Closed(job),
            }),
            None => Err(Refused::Closed(job)),
        }
    }
}

/// The next job, or `None` once the pool is gone and the queue empty.
fn next_job<J>(receiver: &Mutex<Receiver<J>>) -> Option<J> {
    receiver
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .recv()
        .ok()
}

impl<J: Send + 'static> Drop for WorkerPool<J> {
    fn drop(&mut self) {
        self.jobs.take();
        // A worker that drops its own pool cannot wait for itself: the others are left to
        // end on their own.
        if self.ids.contains(&thread::current().id()) {
            return;
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_job_is_done_before_the_pool_is_gone() {
        let done = Arc::new(AtomicUsize::new(0));
        let pool = WorkerPool::new("test-pool", 3, 2, |_| {
            let done = done.clone();
            move |n: usize| {
                done.fetch_add(n, Ordering::SeqCst);
            }
        })
        .unwrap();
        for n in 1..=100 {
            pool.submit(n).unwrap();
        }
        drop(pool);
        assert_eq!(done.load(Ordering::SeqCst), 5050);
    }

    #[test]
    fn a_full_queue_refuses_without_waiting() {
        let pool = WorkerPool::new("test-slow", 1, 1, |_| {
            |_: u32| thread::sleep(std::time::Duration::from_millis(200))
        })
        .unwrap();
        // One in hand, one queued, the third refused.
        pool.submit(1).unwrap();
        let mut refused = false;
        for n in 2..10 {
            if let Err(Refused::Full(job)) = pool.try_submit(n) {
                assert_eq!(job, n);
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
