//! The free blocks in eviction order, as an intrusive doubly linked list over block ids.
//!
//! A `VecDeque` would do for handing blocks out, but a prefix-cache hit takes a free block back
//! out of the middle of the queue, which must not cost a scan of every free block. Links live in
//! one vector indexed by block id, so nothing allocates after construction.

use super::BlockId;

#[derive(Debug, Clone, Copy, Default)]
struct Link {
    prev: Option<BlockId>,
    next: Option<BlockId>,
    queued: bool,
}

/// Front = evicted first.
#[derive(Debug)]
pub(super) struct FreeQueue {
    links: Vec<Link>,
    head: Option<BlockId>,
    tail: Option<BlockId>,
    len: usize,
}

impl FreeQueue {
    /// A queue holding every block `0..num_blocks`, in id order.
    pub fn new(num_blocks: usize) -> Self {
        let mut queue =
            Self { links: vec![Link::default(); num_blocks], head: None, tail: None, len: 0 };
        for index in 0..num_blocks {
            // The caller has checked that `num_blocks` fits a BlockId.
            queue.push_back(index as BlockId);
        }
        queue
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn contains(&self, id: BlockId) -> bool {
        self.links[id as usize].queued
    }

    pub fn pop_front(&mut self) -> Option<BlockId> {
        let id = self.head?;
        self.remove(id);
        Some(id)
    }

    /// Queues `id` to be evicted last.
    pub fn push_back(&mut self, id: BlockId) {
        debug_assert!(!self.contains(id), "block {id} queued twice");
        self.links[id as usize] = Link { prev: self.tail, next: None, queued: true };
        match self.tail {
            Some(tail) => self.links[tail as usize].next = Some(id),
            None => self.head = Some(id),
        }
        self.tail = Some(id);
        self.len += 1;
    }

    /// Queues `id` to be evicted first.
    pub fn push_front(&mut self, id: BlockId) {
        debug_assert!(!self.contains(id), "block {id} queued twice");
        self.links[id as usize] = Link { prev: None, next: self.head, queued: true };
        match self.head {
            Some(head) => self.links[head as usize].prev = Some(id),
            None => self.tail = Some(id),
        }
        self.head = Some(id);
        self.len += 1;
    }

    /// Takes `id` out of the queue wherever it is; returns false when it was not queued.
    pub fn remove(&mut self, id: BlockId) -> bool {
        let Link { prev, next, queued } = self.links[id as usize];
        if !queued {
            return false;
        }
        match prev {
            Some(prev) => self.links[prev as usize].next = next,
            None => self.head = next,
        }
        match next {
            Some(next) => self.links[next as usize].prev = prev,
            None => self.tail = prev,
        }
        self.links[id as usize] = Link::default();
        self.len -= 1;
        true
    }

    /// Front to back; for tests and debugging.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<BlockId> {
        std::iter::successors(self.head, |&id| self.links[id as usize].next).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_in_id_order() {
        let queue = FreeQueue::new(4);
        assert_eq!(queue.to_vec(), [0, 1, 2, 3]);
        assert_eq!(queue.len(), 4);
    }

    #[test]
    fn removes_from_anywhere_and_keeps_order() {
        let mut queue = FreeQueue::new(5);
        assert!(queue.remove(2));
        assert!(!queue.remove(2), "already out");
        assert!(queue.remove(0));
        assert!(queue.remove(4));
        assert_eq!(queue.to_vec(), [1, 3]);
        queue.push_back(0);
        queue.push_front(4);
        assert_eq!(queue.to_vec(), [4, 1, 3, 0]);
        assert_eq!(queue.len(), 4);
        assert!(!queue.contains(2));
    }

    #[test]
    fn drains_to_empty_and_refills() {
        let mut queue = FreeQueue::new(2);
        assert_eq!(queue.pop_front(), Some(0));
        assert_eq!(queue.pop_front(), Some(1));
        assert_eq!(queue.pop_front(), None);
        assert_eq!(queue.len(), 0);
        queue.push_front(1);
        queue.push_back(0);
        assert_eq!(queue.to_vec(), [1, 0]);
    }
}
