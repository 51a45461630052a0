//! The contract between a sequential data structure and node replication.

/// A sequential data structure that node replication can replicate.
///
/// Write operations are values (they are stored in the shared log and replayed
/// on every replica, so they must be `Clone + Send` and *deterministic*: the
/// same operation on the same state must give the same state and response on
/// every replica). Read operations run on one replica only and may borrow from
/// the caller (`ReadOperation<'a>`), for example a key by reference.
///
/// The shape matches the `node-replication` crate's `Dispatch`, so a structure
/// written for it moves over by renaming the read operation to a generic
/// associated type.
///
/// ```
/// use noderep::Dispatch;
/// use std::collections::HashMap;
///
/// #[derive(Default)]
/// struct Map(HashMap<u64, u64>);
///
/// #[derive(Clone)]
/// enum Write { Put(u64, u64), Remove(u64) }
///
/// impl Dispatch for Map {
///     type ReadOperation<'a> = &'a u64;
///     type WriteOperation = Write;
///     type Response = Option<u64>;
///     fn dispatch(&self, key: &u64) -> Option<u64> { self.0.get(key).copied() }
///     fn dispatch_mut(&mut self, op: Write) -> Option<u64> {
///         match op {
///             Write::Put(k, v) => self.0.insert(k, v),
///             Write::Remove(k) => self.0.remove(&k),
///         }
///     }
/// }
/// ```
pub trait Dispatch {
    /// A read-only operation; may borrow from the caller for `'a`.
    type ReadOperation<'a>
    where
        Self: 'a;
    /// A mutating operation, recorded in the shared log and replayed on every
    /// replica.
    type WriteOperation: Clone + Send;
    /// What an operation returns.
    type Response;

    /// Runs a read-only operation on this replica.
    fn dispatch<'a>(&self, op: Self::ReadOperation<'a>) -> Self::Response;

    /// Applies a mutating operation to this replica. Must be deterministic.
    fn dispatch_mut(&mut self, op: Self::WriteOperation) -> Self::Response;

    /// A copy of this replica's state, from which a parked or newly added
    /// replica is rebuilt; `None` (the default) if the structure cannot be
    /// copied.
    ///
    /// With copies, a replica whose threads stay idle is *parked* and costs
    /// writers elsewhere nothing; its next operation first rebuilds it from
    /// a live replica (the cost of this method). Without them, idle replicas
    /// are kept current by the other replicas' writers ("helping"), and
    /// [`NodeReplicated::add_replica`](crate::NodeReplicated::add_replica)
    /// is unavailable. The answer must not change over the structure's life
    /// (it is asked once, when the instance is built). For a `Clone` type:
    ///
    /// ```
    /// # use noderep::{Dispatch, NodeReplicated, ReplicaPolicy};
    /// # use noderep::topology::Topology;
    /// # #[derive(Default, Clone)]
    /// # struct Counter(u64);
    /// # impl Dispatch for Counter {
    /// #     type ReadOperation<'a> = ();
    /// #     type WriteOperation = u64;
    /// #     type Response = u64;
    /// #     fn dispatch(&self, _: ()) -> u64 { self.0 }
    /// #     fn dispatch_mut(&mut self, n: u64) -> u64 { self.0 += n; self.0 }
    /// fn snapshot(&self) -> Option<Self> { Some(self.clone()) }
    /// # }
    /// # let nr = NodeReplicated::builder()
    /// #     .topology(Topology::simulated(1, 1)?)
    /// #     .replicas(ReplicaPolicy::Fixed(1))
    /// #     .max_replicas(2)
    /// #     .build(|_| Counter::default())?;
    /// # let token = nr.register()?;
    /// # nr.execute_mut(5, &token)?;
    /// # let added = nr.add_replica()?; // rebuilt from a copy
    /// # assert_eq!(nr.execute((), &nr.register_on(added)?)?, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn snapshot(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}
