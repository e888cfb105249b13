//! What the kvm control thread tells one vCPU thread.
//!
//! The control thread owns the fault engine; a vCPU thread owns its vCPU
//! fd, and only that thread may write the vCPU's registers. So whatever the
//! engine decides for a vCPU (return from a call, inject an exception, set
//! the ready line, wait, go on) is posted here and applied by the vCPU's own
//! thread: at once if it is blocked waiting for an answer, or after a kick
//! has brought it out of `KVM_RUN`. Plain std, so it is compiled and tested
//! on every host.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use apflab_hypervisor::Action;

/// One message for a vCPU thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mail {
    /// Write x0..x3: the result of the call the vCPU is blocked on.
    Return([u64; 4]),
    /// Apply this action (never a wait: the control thread times those).
    Apply(Action),
    /// Stop running the guest until [`Mail::Resume`].
    Wait,
    /// Run the guest again.
    Resume,
    /// The run is over.
    Stop,
}

/// A vCPU thread's queue of [`Mail`].
#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Mail>>,
    posted: Condvar,
}

impl Mailbox {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Mail>> {
        // The queue is consistent after any panic elsewhere.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `mail` and wakes the thread if it is blocked here. (A thread
    /// inside `KVM_RUN` also needs a kick.)
    pub fn post(&self, mail: Mail) {
        self.queue().push_back(mail);
        self.posted.notify_one();
    }

    /// The oldest mail, if any, without blocking.
    pub fn try_take(&self) -> Option<Mail> {
        self.queue().pop_front()
    }

    /// The oldest mail, blocking until there is one.
    pub fn take(&self) -> Mail {
        let mut q = self.queue();
        loop {
            if let Some(m) = q.pop_front() {
                return m;
            }
            q = self.posted.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn mail_arrives_in_order_and_wakes_a_blocked_reader() {
        let mb = Arc::new(Mailbox::default());
        assert_eq!(mb.try_take(), None);
        let reader = {
            let mb = Arc::clone(&mb);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    let m = mb.take();
                    let last = m == Mail::Resume;
                    got.push(m);
                    if last {
                        return got;
                    }
                }
            })
        };
        mb.post(Mail::Return([1, 2, 3, 4]));
        mb.post(Mail::Apply(Action::SetReadyLine(true)));
        mb.post(Mail::Resume);
        assert_eq!(
            reader.join().unwrap(),
            [
                Mail::Return([1, 2, 3, 4]),
                Mail::Apply(Action::SetReadyLine(true)),
                Mail::Resume
            ]
        );
    }
}
