//! The domains the daemon knows: which are introduced, and which manage
//! another (SET_TARGET).

use std::collections::{BTreeSet, HashMap};

/// Introduced domains and targets. dom0 is always introduced.
#[derive(Debug, Default)]
pub struct Domains {
    introduced: BTreeSet<u32>,
    targets: HashMap<u32, u32>,
}

impl Domains {
    pub fn is_introduced(&self, domid: u32) -> bool {
        domid == 0 || self.introduced.contains(&domid)
    }

    /// Records an INTRODUCE; true if the domain is new (fire
    /// `@introduceDomain`), false if it was already known.
    pub fn introduce(&mut self, domid: u32) -> bool {
        domid != 0 && self.introduced.insert(domid)
    }

    /// Forgets a domain (RELEASE); true if it was introduced.
    pub fn release(&mut self, domid: u32) -> bool {
        self.targets.remove(&domid);
        self.targets.retain(|_, target| *target != domid);
        self.introduced.remove(&domid)
    }

    pub fn set_target(&mut self, domid: u32, target: u32) {
        self.targets.insert(domid, target);
    }

    pub fn target_of(&self, domid: u32) -> Option<u32> {
        self.targets.get(&domid).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn introduce_release_cycle() {
        let mut d = Domains::default();
        assert!(d.is_introduced(0));
        assert!(!d.introduce(0));
        assert!(d.introduce(3));
        assert!(!d.introduce(3));
        d.set_target(4, 3);
        assert_eq!(d.target_of(4), Some(3));
        assert!(d.release(3));
        assert_eq!(d.target_of(4), None);
        assert!(!d.release(3));
        assert!(!d.is_introduced(3));
    }
}
