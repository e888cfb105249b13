//! Exits counted by kind: what the results file reports under `exits`,
//! and the guest's signs of life the watchdog looks at.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Exits by kind; a snapshot saves it as the map of counts it wraps.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExitCounts(BTreeMap<String, u64>);

impl ExitCounts {
    /// Counts `n` exits of kind `kind`.
    pub fn add(&mut self, kind: &str, n: u64) {
        match self.0.get_mut(kind) {
            Some(c) => *c += n,
            None => {
                self.0.insert(kind.to_owned(), n);
            }
        }
    }

    /// Counts one exit of kind `kind`.
    pub fn count(&mut self, kind: &str) {
        self.add(kind, 1);
    }

    /// Every exit counted except those that are no work of the guest's
    /// (WFI, the emu slice ends, the kvm loop's kicks to look at a vCPU,
    /// the emu's kicks that deliver "page ready" to a running vCPU).
    pub fn activity(&self) -> u64 {
        self.0
            .iter()
            .filter(|(kind, _)| {
                !matches!(
                    kind.as_str(),
                    "wfi" | "slice_end" | "resume_check" | "ready_kick"
                )
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// The counts, by kind.
    pub fn by_kind(&self) -> &BTreeMap<String, u64> {
        &self.0
    }
}
