//! Membership changes: joining servers get an identity, are added as learners, promoted to
//! voters once they caught up, and removed again. Every change runs on the leader; other
//! servers pass the call on once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};

use super::error::ClusterError;
use super::server_core::{Core, fatal};
use super::types::Member;
use super::wire::{AddServerCall, AddServerReply, JoinCall, JoinReply, RemoveServerCall};

/// Where a membership call runs.
enum Route {
    /// Here: this server leads.
    Local,
    /// At the leader, at this address.
    Forward(String),
}

// === impl Core ===

impl Core {
    fn route(&self, forwarded: bool) -> Result<Route, ClusterError> {
        match self.leader() {
            Some((id, _)) if id == self.node_id => Ok(Route::Local),
            Some((_, addr)) if !forwarded => Ok(Route::Forward(addr)),
            leader => Err(ClusterError::NotLeader {
                node_id: self.node_id,
                leader: leader.map(|(id, _)| id),
            }),
        }
    }

    /// The members as this server knows them: voters, and every node with its address.
    fn members(&self) -> (BTreeSet<u64>, BTreeMap<u64, Member>) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let voters = m.membership_config.voter_ids().collect();
        let nodes = m
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        (voters, nodes)
    }

    fn check_cluster(&self, theirs: Option<uuid::Uuid>) -> Result<(), ClusterError> {
        match theirs {
            Some(theirs) if theirs != self.cluster_id => Err(ClusterError::JoinRefused {
                reason: format!(
                    "the joining server's data dir belongs to cluster {theirs}, but this is \
                     cluster {}: give it an empty data dir",
                    self.cluster_id
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses a server whose id or address another member already has.
    fn check_free(&self, node_id: Option<u64>, addr: &str) -> Result<(), ClusterError> {
        let (_, nodes) = self.members();
        if let Some(id) = node_id
            && let Some(existing) = nodes.get(&id).filter(|n| n.raft_addr != addr)
        {
            return Err(ClusterError::JoinRefused {
                reason: format!(
                    "node id {id} is already taken by the server at {}: choose another \
                         --node-id or leave it out",
                    existing.raft_addr
                ),
            });
        }
        if let Some((other, _)) = nodes
            .iter()
            .find(|(id, n)| n.raft_addr == addr && Some(**id) != node_id)
        {
            return Err(ClusterError::JoinRefused {
                reason: format!("address {addr} is already server {other}'s"),
            });
        }
        Ok(())
    }

    /// Picks the node id of a joining server and holds it for the server at `addr` until the
    /// join can have finished, so that servers joining at once get different ids.
    fn reserve_id(&self, wanted: Option<u64>, addr: &str) -> Result<u64, ClusterError> {
        let hold = self.tuning.join_timeout + self.tuning.request_timeout * 2;
        let mut pending = self
            .pending_joins
            .lock()
            .expect("invariant: the pending-join lock is never held across a panic");
        pending.retain(|_, (_, at)| at.elapsed() < hold);
        if let Some((id, _)) = pending.iter().find(|(_, (a, _))| a == addr)
            && wanted.is_none_or(|w| w == *id)
        {
            return Ok(*id);
        }
        let id = match wanted {
            Some(id) => {
                if let Some((other, _)) = pending.get(&id).filter(|(a, _)| a != addr) {
                    return Err(ClusterError::JoinRefused {
                        reason: format!(
                            "node id {id} is being taken by the server at {other}, which is joining now"
                        ),
                    });
                }
                id
            }
            None => {
                let members = self.members().1;
                let highest = members
                    .keys()
                    .chain(pending.keys())
                    .max()
                    .copied()
                    .unwrap_or(0);
                highest + 1
            }
        };
        pending.insert(id, (addr.to_string(), std::time::Instant::now()));
        Ok(id)
    }

    /// Gives a joining server the cluster id and its node id.
    pub(crate) async fn join(&self, call: JoinCall) -> Result<JoinReply, ClusterError> {
        self.check_cluster(call.cluster_id)?;
        match self.route(call.forwarded)? {
            Route::Forward(addr) => {
                let mut client = self.peers.cluster(&addr)?;
                let mut req = tonic::Request::new(JoinCall {
                    forwarded: true,
                    ..call
                });
                req.set_timeout(self.tuning.request_timeout);
                let reply = client.join(req).await;
                reply
                    .map(tonic::Response::into_inner)
                    .map_err(|s| ClusterError::from_status(&s, &addr))
            }
            Route::Local => {
                self.check_free(call.node_id, &call.raft_addr)?;
                let node_id = self.reserve_id(call.node_id, &call.raft_addr)?;
                Ok(JoinReply {
                    cluster_id: self.cluster_id,
                    node_id,
                })
            }
        }
    }

    /// Adds a running server: as a learner, then, once it has caught up, as a voter. A server
    /// that does not catch up within the join timeout is removed again and the call fails.
    pub(crate) async fn add_server(
        &self,
        call: AddServerCall,
    ) -> Result<AddServerReply, ClusterError> {
        self.check_cluster(Some(call.cluster_id))?;
        if let Route::Forward(addr) = self.route(call.forwarded)? {
            let mut client = self.peers.cluster(&addr)?;
            let mut req = tonic::Request::new(AddServerCall {
                forwarded: true,
                ..call
            });
            req.set_timeout(self.tuning.join_timeout + self.tuning.request_timeout);
            let reply = client.add_server(req).await;
            return reply
                .map(tonic::Response::into_inner)
                .map_err(|s| ClusterError::from_status(&s, &addr));
        }
        let _guard = self.membership_lock.lock().await;
        let (id, addr) = (call.node_id, call.raft_addr);
        self.check_free(Some(id), &addr)?;
        let (voters, _) = self.members();
        if voters.contains(&id) {
            return Ok(AddServerReply {
                members: self.members().1,
            });
        }
        let member = Member {
            raft_addr: addr.clone(),
        };
        // Never block inside openraft: `add_learner(.., true)` can wait forever for a learner
        // that cannot be reached once the log is long.
        self.change(
            ChangeMembers::AddNodes([(id, member)].into()),
            "add learner",
        )
        .await?;
        let target = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let caught_up = self
            .raft
            .wait(Some(self.tuning.join_timeout))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|matched| matched.index >= target)
                },
                "learner caught up",
            )
            .await;
        if caught_up.is_err() {
            let undo = self
                .change(ChangeMembers::RemoveNodes([id].into()), "remove learner")
                .await;
            if let Err(e) = undo {
                tracing::warn!(node = id, error = %e, "could not remove a learner that never caught up");
            }
            return Err(ClusterError::Membership {
                reason: format!(
                    "server {id} at {addr} did not catch up within {} s, so it was not added: \
                     check that it is running and that {addr} is reachable from server {} ({})",
                    self.tuning.join_timeout.as_secs(),
                    self.node_id,
                    self.raft_addr,
                ),
            });
        }
        self.change(ChangeMembers::AddVoterIds([id].into()), "promote to voter")
            .await?;
        tracing::info!(node = id, addr = %addr, "server added as a voter");
        Ok(AddServerReply {
            members: self.members().1,
        })
    }

    /// Removes a server from the cluster (voter or learner).
    pub(crate) async fn remove_server(
        &self,
        call: RemoveServerCall,
    ) -> Result<AddServerReply, ClusterError> {
        if let Route::Forward(addr) = self.route(call.forwarded)? {
            let mut client = self.peers.cluster(&addr)?;
            let mut req = tonic::Request::new(RemoveServerCall {
                forwarded: true,
                ..call
            });
            req.set_timeout(self.tuning.request_timeout);
            let reply = client.remove_server(req).await;
            return reply
                .map(tonic::Response::into_inner)
                .map_err(|s| ClusterError::from_status(&s, &addr));
        }
        let _guard = self.membership_lock.lock().await;
        let id = call.node_id;
        let (voters, nodes) = self.members();
        if !nodes.contains_key(&id) {
            return Err(ClusterError::Membership {
                reason: format!("there is no server {id} in the cluster"),
            });
        }
        if voters.len() == 1 && voters.contains(&id) {
            return Err(ClusterError::Membership {
                reason: format!("server {id} is the last voter; a cluster cannot remove it"),
            });
        }
        if voters.contains(&id) {
            self.change(ChangeMembers::RemoveVoters([id].into()), "remove voter")
                .await?;
        } else {
            self.change(ChangeMembers::RemoveNodes([id].into()), "remove learner")
                .await?;
        }
        tracing::info!(node = id, "server removed");
        Ok(AddServerReply {
            members: self.members().1,
        })
    }

    /// Commits a membership change, bounded by the request timeout.
    async fn change(
        &self,
        change: ChangeMembers<u64, Member>,
        what: &str,
    ) -> Result<(), ClusterError> {
        let timeout: Duration = self.tuning.request_timeout;
        match tokio::time::timeout(timeout, self.raft.change_membership(change, false)).await {
            Err(_) => Err(ClusterError::Timeout {
                what: format!("membership change ({what})"),
                millis: timeout.as_millis() as u64,
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ClusterError::NotLeader {
                    node_id: self.node_id,
                    leader: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ClusterError::Membership {
                    reason: format!("{what}: {e}"),
                })
            }
            Ok(Err(RaftError::Fatal(e))) => Err(fatal(e)),
        }
    }
}
