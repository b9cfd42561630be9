//! One subscriber's queue of live events, bounded in events and in bytes.
//!
//! The hub's committer pushes the events a subscriber matches; the subscriber's task takes
//! everything queued at once (a swap, no copy) and writes the shared frames. The consumer
//! is woken only when it is waiting, so a burst costs one wake-up per drain, not one per
//! event. A push that would exceed a bound marks the queue lagged and frees what it held:
//! the subscriber is disconnected alone, and it resumes from its last ID.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::Event;

/// Bounds of a subscriber's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most events queued (`hub.subscriber_backlog`).
    pub events: usize,
    /// Most bytes of frames queued (`hub.subscriber_queue_bytes`). A single event larger
    /// than this still goes to a subscriber whose queue is empty.
    pub bytes: usize,
}

/// The subscriber fell behind a bound and must be disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the subscriber fell behind its queue bound")]
pub struct Lagged;

/// Consumers to wake once the producer is done: a commit collects them under the hub's
/// lock and wakes them after (when dropped, or with [`Wakeups::wake_all`]), so that
/// waking 10,000 subscriber tasks neither holds the hub's lock nor queues them ahead of
/// what the committer still has to do (the disk store answers its requests first).
#[derive(Debug, Default)]
#[must_use = "dropping the wake-ups wakes the consumers at once"]
pub struct Wakeups(Vec<Waker>);

impl Wakeups {
    /// Wakes every collected consumer.
    pub fn wake_all(self) {
        drop(self);
    }

    /// Takes the wake-ups of `other` too.
    pub fn extend(&mut self, mut other: Wakeups) {
        self.0.append(&mut other.0);
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        for waker in self.0.drain(..) {
            waker.wake();
        }
    }
}

/// A queue shared by the hub (producer) and one subscriber (consumer).
#[derive(Debug)]
pub struct Queue {
    limits: QueueLimits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    lagged: bool,
    waker: Option<Waker>,
}

impl Queue {
    /// An empty queue (allocates nothing until the first event).
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event for the consumer. `Err(Lagged)` when a bound was exceeded: the
    /// queue is emptied and stays lagged, and the consumer is woken to end its stream.
    pub fn push(&self, event: &Arc<Event>) -> Result<(), Lagged> {
        self.push_all(std::slice::from_ref(event))
    }

    /// [`Queue::push_all`], waking the consumer at once.
    pub fn push_all(&self, events: &[Arc<Event>]) -> Result<(), Lagged> {
        let mut wakeups = Wakeups::default();
        self.push_all_deferred(events, &mut wakeups)
    }

    /// Queues several events, in order, under one lock and with at most one wake-up of
    /// the consumer (a webhook's batch costs one wake per subscriber, not one per
    /// event). Each event is held to the bounds as [`Queue::push`] would hold it; when
    /// one exceeds a bound the queue is lagged and holds nothing, as after `push`.
    ///
    /// The consumer's wake-up is added to `wakeups` rather than done here, so the hub
    /// wakes its subscribers after releasing its lock, and the disk store's writer
    /// after answering the requests whose events these are.
    pub fn push_all_deferred(
        &self,
        events: &[Arc<Event>],
        wakeups: &mut Wakeups,
    ) -> Result<(), Lagged> {
        let waker;
        let mut result = Ok(());
        {
            let mut s = self.lock();
            if s.lagged {
                return Err(Lagged);
            }
            for event in events {
                let size = event.frame.len();
                let full = !s.events.is_empty()
                    && (s.events.len() >= self.limits.events || s.bytes + size > self.limits.bytes);
                if full {
                    s.lagged = true;
                    s.events = VecDeque::new();
                    s.bytes = 0;
                    result = Err(Lagged);
                    break;
                }
                s.events.push_back(event.clone());
                s.bytes += size;
            }
            waker = s.waker.take();
        }
        if let Some(w) = waker {
            wakeups.0.push(w);
        }
        result
    }

    /// Waits for events and moves every queued one into `out` (which must be empty; its
    /// allocation is kept for the next swap). `Err(Lagged)` once a bound was exceeded.
    pub async fn take_all(&self, out: &mut VecDeque<Arc<Event>>) -> Result<(), Lagged> {
        poll_fn(|cx| self.poll_take_all(cx, out)).await
    }

    /// [`Queue::take_all`] for a hand-written future: `Pending` (the consumer to be woken)
    /// while the queue is empty.
    pub fn poll_take_all(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Arc<Event>>,
    ) -> Poll<Result<(), Lagged>> {
        let mut s = self.lock();
        if s.lagged {
            return Poll::Ready(Err(Lagged));
        }
        if s.events.is_empty() {
            match &s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => s.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        out.clear();
        std::mem::swap(out, &mut s.events);
        s.bytes = 0;
        Poll::Ready(Ok(()))
    }

    /// Bytes of frames currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether the queue overflowed.
    pub fn is_lagged(&self) -> bool {
        self.lock().lagged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::EventDraft;

    fn ev(seq: u64, data: &str) -> Arc<Event> {
        Arc::new(Event::new(seq, EventDraft::new(vec!["t".into()], data)))
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_events() {
        let e = ev(1, &"x".repeat(100));
        let size = e.frame.len();
        let q = Queue::new(QueueLimits {
            events: 100,
            bytes: size * 3,
        });
        for _ in 0..3 {
            q.push(&e).unwrap();
        }
        assert_eq!(q.queued_bytes(), size * 3);
        let mut out = VecDeque::new();
        q.take_all(&mut out).await.unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(q.queued_bytes(), 0);
        for _ in 0..3 {
            q.push(&e).unwrap();
        }
        assert_eq!(q.push(&e), Err(Lagged), "a fourth frame exceeds the bytes");
        assert!(q.is_lagged());
        assert_eq!(q.queued_bytes(), 0, "a lagged queue holds nothing");
        assert_eq!(q.take_all(&mut out).await, Err(Lagged));

        let q = Queue::new(QueueLimits {
            events: 2,
            bytes: usize::MAX,
        });
        q.push(&e).unwrap();
        q.push(&e).unwrap();
        assert_eq!(q.push(&e), Err(Lagged), "a third event exceeds the count");
    }

    #[tokio::test]
    async fn an_event_larger_than_the_bound_still_reaches_an_empty_queue() {
        let big = ev(1, &"x".repeat(1000));
        let q = Queue::new(QueueLimits {
            events: 10,
            bytes: 10,
        });
        q.push(&big).unwrap();
        let mut out = VecDeque::new();
        q.take_all(&mut out).await.unwrap();
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken() {
        let q = Arc::new(Queue::new(QueueLimits {
            events: 10,
            bytes: 1 << 20,
        }));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut out = VecDeque::new();
                q.take_all(&mut out).await.map(|()| out.len())
            })
        };
        tokio::task::yield_now().await;
        q.push(&ev(1, "a")).unwrap();
        assert_eq!(consumer.await.unwrap(), Ok(1));
    }
}
