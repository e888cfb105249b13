//! A CPU's run queue: a fixed-capacity FIFO of task ids.

/// Task ids waiting to run, first in first out; at most `N`.
#[derive(Clone, Copy, Debug)]
pub struct RunQueue<const N: usize> {
    slots: [usize; N],
    head: usize,
    len: usize,
}

impl<const N: usize> RunQueue<N> {
    /// An empty queue.
    pub const EMPTY: RunQueue<N> = RunQueue {
        slots: [0; N],
        head: 0,
        len: 0,
    };

    /// Queues `task` at the back. A kernel has at most `N` tasks, each
    /// queued at most once, so a full queue is a kernel bug.
    ///
    /// # Panics
    ///
    /// If the queue already holds `N` tasks.
    pub fn push(&mut self, task: usize) {
        assert!(self.len < N, "run queue overflow");
        self.slots[(self.head + self.len) % N] = task;
        self.len += 1;
    }

    /// Takes the task at the front.
    pub fn pop(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let t = self.slots[self.head];
        self.head = (self.head + 1) % N;
        self.len -= 1;
        Some(t)
    }

    /// Takes the task with the smallest `key`, the one nearest the front
    /// among equals (so equal keys go in FIFO order): the fair scheduler's
    /// pick, with the key the task's charged runtime.
    pub fn take_min_by(&mut self, key: impl Fn(usize) -> u64) -> Option<usize> {
        let best = (0..self.len).min_by_key(|&i| (key(self.slots[(self.head + i) % N]), i))?;
        let task = self.slots[(self.head + best) % N];
        // Close the gap: the tasks behind it move up one place.
        for i in best..self.len - 1 {
            self.slots[(self.head + i) % N] = self.slots[(self.head + i + 1) % N];
        }
        self.len -= 1;
        Some(task)
    }

    /// The smallest `key` of a queued task, if any.
    pub fn min_key(&self, key: impl Fn(usize) -> u64) -> Option<u64> {
        (0..self.len)
            .map(|i| key(self.slots[(self.head + i) % N]))
            .min()
    }

    /// Tasks queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no task is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_come_out_in_the_order_they_went_in_across_the_wrap() {
        let mut q = RunQueue::<3>::EMPTY;
        assert_eq!(q.pop(), None);
        for round in 0..5 {
            q.push(round);
            q.push(round + 10);
            assert_eq!(q.len(), 2);
            assert_eq!(q.pop(), Some(round));
            assert_eq!(q.pop(), Some(round + 10));
            assert!(q.is_empty());
        }
        q.push(1);
        q.push(2);
        q.push(3);
        assert_eq!(
            (q.pop(), q.pop(), q.pop(), q.pop()),
            (Some(1), Some(2), Some(3), None)
        );
    }

    #[test]
    fn the_least_key_comes_out_first_and_equals_keep_their_order() {
        let mut q = RunQueue::<4>::EMPTY;
        let runtime = [30, 10, 10, 5];
        // Start past the wrap so the gap closes across it.
        q.push(9);
        q.push(9);
        q.pop();
        q.pop();
        for t in [0, 1, 2, 3] {
            q.push(t);
        }
        let key = |t: usize| runtime[t];
        assert_eq!(q.min_key(key), Some(5));
        assert_eq!(q.take_min_by(key), Some(3));
        assert_eq!(q.take_min_by(key), Some(1));
        assert_eq!(q.take_min_by(key), Some(2));
        q.push(1);
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(0), Some(1), None));
        assert_eq!(q.take_min_by(key), None);
        assert_eq!(q.min_key(key), None);
    }

    #[test]
    #[should_panic(expected = "run queue overflow")]
    fn a_full_queue_refuses_another_task() {
        let mut q = RunQueue::<2>::EMPTY;
        q.push(0);
        q.push(1);
        q.push(2);
    }
}
