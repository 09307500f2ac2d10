//! The device's side of the writer: its welcome, the entries and the download the primaries
//! send, and a file found to be a copy of another device's.

use super::*;

/// The meta key under which a device's file notes that it is a copy of another device's (the
/// transaction id where that was found).
pub(crate) const COPIED_FILE_KEY: &str = "copied_file";

impl Writer {
    pub(super) fn welcome(
        &mut self,
        node_id: u32,
        user_id: i64,
        primary_key: crate::crypto::PublicKey,
    ) -> Result<()> {
        let id = &self.shared.identity;
        // Only this thread sets the pin: it may be read now and set after the commit.
        let pin = self
            .shared
            .primary_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if id.node_id() == node_id && id.user_id() == user_id && !pin {
            return Ok(());
        }
        if id.node_id() != 0 && id.node_id() != node_id {
            return Err(Error::rule(format!(
                "the primary knows this device as node {node_id}, but its file belongs to node {}; use a fresh file",
                id.node_id()
            )));
        }
        write_txn(&self.conn, |c| {
            meta_set(c, "node_id", node_id as i64)?;
            meta_set(c, "user_id", user_id)?;
            if pin {
                // Trust on first use: from now on only this primary gets anything.
                meta_set(c, crate::node::PRIMARY_KEY, primary_key.to_hex())?;
            }
            Ok(())
        })?;
        id.set_authorized(node_id, user_id);
        if pin {
            *self
                .shared
                .primary_key
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(primary_key);
        }
        Ok(())
    }

    /// Device: this file is a copy of another device's in use (found at transaction `txn`).
    /// Kept in the file, so that it does not sync again, even after a restart, until
    /// `PRAGMA new_identity`; the app hears it once.
    pub(super) fn copied_file(&mut self, txn: u64) {
        if let Err(e) = write_txn(&self.conn, |c| meta_set(c, COPIED_FILE_KEY, txn as i64)) {
            tracing::error!("cannot note in the file that it is a copy of another device's: {e}");
        }
        let reason = Error::CopiedFile { txn }.to_string();
        let first = {
            let mut live = self.shared.live.lock().unwrap_or_else(|p| p.into_inner());
            live.sync_error = Some(reason.clone());
            live.copied_file.replace(txn).is_none()
        };
        if first {
            tracing::warn!(txn, "{reason}");
            self.shared.emit(Event::CopiedFile { txn, reason });
        }
    }

    /// Device whose file was found a copy of another device's: a new key pair replaces the
    /// file's, its node and user ids are forgotten, and its Hello names the old key
    /// (`clone_of`), so that the backend approves it afresh, knowing. Its data and pending
    /// work stay. Takes effect when the database is opened again.
    pub(super) fn new_identity(&mut self) -> Result<String> {
        let refuse = |reason: &str| Error::Pragma {
            name: "new_identity".into(),
            reason: reason.into(),
        };
        if self.shared.identity.role != Some(Role::Secondary) {
            return Err(refuse(
                "only a device (node=secondary) takes a new identity",
            ));
        }
        let copied = self
            .shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .copied_file;
        if copied.is_none() {
            return Err(refuse(
                "this device's file was not found to be a copy of another device's; a new \
                 identity is for such a copy only (it would need the backend's approval again)",
            ));
        }
        let old = self.shared.keys.public_key().to_hex();
        let keys = crate::crypto::NodeKeys::generate();
        let new = keys.public_key().to_hex();
        write_txn(&self.conn, |c| {
            meta_set(c, "node_keys", keys.to_bytes())?;
            meta_set(c, crate::node::secondary::CLONE_OF_KEY, &old)?;
            c.execute(
                "DELETE FROM _octo_meta WHERE key IN ('node_id', 'user_id', ?1)",
                [COPIED_FILE_KEY],
            )?;
            // Kept to be sent again under the old key: not this key's transactions.
            c.execute("DELETE FROM _octo_accepted", [])?;
            Ok(())
        })?;
        tracing::warn!(old = %old, new = %new, "this device takes a new key; open the database again to sync under it");
        self.shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync_error = Some(format!(
            "this device has a new key ({new}), taken because its file was a copy of another \
             device's: open the database again to sync under it; the backend approves it afresh"
        ));
        Ok(new)
    }

    /// Device: the primaries decided outbox transaction ids up to `last_decided`. A healthy
    /// device has sent each of them: below the first id no earlier run sent
    /// (`outbox::note_run_start`), or sent by this run. When they go beyond both, another file
    /// sent them under this device's key: this file is a copy of it, or went back in time
    /// (restored from a backup, a VM rolled back), and the other's work under those ids is
    /// not this file's. Neither can be told from the other, nor a stolen backup from a
    /// restored one: the file stops as a copy (`copied_file`), its work kept, and goes on
    /// only under a new key approved afresh. Otherwise, before anything is sent, the file
    /// forgets that bound: from here on this run's ids may reach the primaries.
    pub(super) fn txn_ids_before_sending(&mut self, last_decided: u64) -> Result<()> {
        let identity = &self.shared.identity;
        let floor = (identity.unsent_txn_from() - 1).max(
            self.shared
                .sent_txn_max
                .load(std::sync::atomic::Ordering::Acquire),
        );
        if last_decided > floor {
            let txn = floor + 1;
            self.copied_file(txn);
            return Err(Error::CopiedFile { txn });
        }
        if !self.sending_noted {
            write_txn(&self.conn, log::outbox::note_sending_begins)?;
            self.sending_noted = true;
        }
        Ok(())
    }

    /// Device: the queued messages of entries from the primaries, in one transaction; every
    /// message is answered with its outcome.
    pub(super) fn apply_queued_entries(&mut self, jobs: Vec<Job>) {
        let mut entries = Vec::new();
        let mut up_to = 0;
        let mut own = log::rebase::OwnWork {
            next_txn: self.shared.identity.next_txn_id(),
            ..Default::default()
        };
        let mut replies = Vec::with_capacity(jobs.len());
        let mut sessions = Vec::new();
        for job in jobs {
            match job {
                // Entries that came after some this session could not apply: applying them
                // would move the device's position past those (they come again, in order,
                // on its next connection).
                Job::Entries { session, reply, .. } if self.failed_sessions.contains(&session) => {
                    let _ = reply.send(Err(Error::rule(
                        "earlier entries of this connection could not be applied",
                    )));
                }
                Job::Entries {
                    entries: e,
                    up_to: u,
                    own_digests: d,
                    session,
                    reply,
                } => {
                    own.digests.extend(d);
                    entries.extend(e);
                    up_to = up_to.max(u);
                    replies.push(reply);
                    sessions.push(session);
                }
                _ => {}
            }
        }
        if replies.is_empty() {
            return;
        }
        let applied = self.apply_entries(&entries, up_to, &own);
        if applied.is_err() {
            self.note_failed_sessions(sessions);
        }
        if let Err(Error::CopiedFile { txn }) = &applied {
            self.copied_file(*txn);
        }
        match applied {
            Ok(()) => replies.into_iter().for_each(|r| {
                let _ = r.send(Ok(()));
            }),
            Err(e) => {
                let message = e.to_string();
                let mut replies = replies.into_iter();
                if let Some(first) = replies.next() {
                    let _ = first.send(Err(e));
                }
                for r in replies {
                    let _ = r.send(Err(Error::io(
                        "writing entries from the primaries",
                        std::io::Error::other(message.clone()),
                    )));
                }
            }
        }
    }

    /// Device: apply a batch from the primaries with rebase of pending work.
    pub(super) fn apply_entries(
        &mut self,
        entries: &[LogEntry],
        up_to: u64,
        own: &log::rebase::OwnWork,
    ) -> Result<()> {
        let my_node = self.shared.identity.node_id();
        let tables = &mut self.tables;
        let now = unix_now();
        let started = std::time::Instant::now();
        let applied = write_txn(&self.conn, |c| {
            let applied = tables
                .in_transaction(|t| log::rebase::apply_entries(c, t, my_node, own, entries))?;
            let seq = applied
                .last_seq
                .max(up_to)
                .max(meta_i64(c, "last_seq")? as u64);
            meta_set(c, "last_seq", seq as i64)?;
            meta_set(c, "last_sync", now)?;
            for (txn_id, reason) in &applied.rejected {
                log::outbox::decisions::keep_rejection(c, *txn_id, reason, now)?;
            }
            if let Some((txn_id, reason)) = applied.rejected.last() {
                let total = meta_i64(c, crate::node::status::REJECTED_TOTAL_KEY)?;
                meta_set(
                    c,
                    crate::node::status::REJECTED_TOTAL_KEY,
                    total + applied.rejected.len() as i64,
                )?;
                let r = crate::node::status::Rejection {
                    txn_id: *txn_id,
                    reason: reason.clone(),
                    at: now,
                };
                meta_set(
                    c,
                    "last_rejected",
                    serde_json::to_string(&r).unwrap_or_default(),
                )?;
            }
            Ok(applied)
        })?;
        self.shared
            .metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::trace!(up_to, rows = applied.rows, "entries applied");
        self.shared.advance_feed(applied.last_seq.max(up_to));
        // In the order the primaries decided them (the order of their ids): an app marking
        // rows synced as it hears of them must not hear of a later transaction first.
        let accepted = applied.accepted.iter().map(|t| (*t, None));
        let rejected = applied.rejected.iter().map(|(t, why)| (*t, Some(why)));
        let mut decisions: Vec<_> = accepted.chain(rejected).collect();
        decisions.sort_by_key(|(txn_id, _)| *txn_id);
        for (txn_id, rejected) in decisions {
            self.shared.emit(match rejected {
                None => Event::TransactionAccepted { txn_id },
                Some(reason) => Event::TransactionRejected {
                    txn_id,
                    reason: reason.clone(),
                },
            });
        }
        if applied.rows > 0 {
            self.shared.emit(Event::DataReceived {
                seq: applied.last_seq,
                rows: applied.rows,
            });
        }
        Ok(())
    }

    pub(super) fn snapshot_begin(
        &mut self,
        statements: &[String],
        renames: Option<&[crate::store::renames::Rename]>,
    ) -> Result<()> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        // The download's commit would otherwise copy the whole database from the WAL into the
        // file before the app hears that it is ready; that copy is done just after instead.
        self.conn
            .execute_batch("PRAGMA wal_autocheckpoint=0; BEGIN IMMEDIATE")?;
        let over_data = self.resync.is_some();
        let begun = (|| {
            let set_aside = match over_data {
                true => {
                    crate::node::resync::begin(&self.conn)?;
                    crate::node::resync::set_aside_outdated(&self.conn, statements)?
                }
                false => Vec::new(),
            };
            for sql in statements {
                match over_data {
                    true => crate::node::resync::apply_ddl(&self.conn, sql)?,
                    false => schema::apply_primaries_ddl(&self.conn, sql)?,
                }
            }
            // The primaries' record holds the renames this device missed (and those it saw).
            if let Some(renames) = renames {
                crate::store::renames::replace_all(&self.conn, renames)?;
            }
            crate::node::resync::bring_back(&self.conn, set_aside)
        })();
        if begun.is_err() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        begun
    }

    pub(super) fn snapshot_rows(
        &mut self,
        table: &str,
        columns: &[String],
        rows: &[(i64, Vec<Value>)],
    ) -> Result<()> {
        let Some(t) = self.tables.get(&self.conn, table)? else {
            return Err(Error::rule(format!(
                "initial download: table `{table}` is missing"
            )));
        };
        match self.resync {
            Some(_) => crate::node::resync::rows(&self.conn, &t, columns, rows),
            None => apply::insert_rows(&self.conn, &t, columns, rows),
        }
    }

    pub(super) fn snapshot_end(&mut self, seq: u64) -> Result<()> {
        let mut removed = None;
        if let Some(epochs) = self.resync.take() {
            removed = Some(crate::node::resync::finish(&self.conn)?);
            log::epochs::keep(&self.conn, &epochs, true)?;
        }
        meta_set(&self.conn, "last_seq", seq as i64)?;
        meta_set(&self.conn, "ready", 1)?;
        meta_set(&self.conn, "last_sync", unix_now())?;
        let started = std::time::Instant::now();
        self.conn.execute_batch("COMMIT")?;
        tracing::debug!(
            micros = started.elapsed().as_micros() as u64,
            "initial download committed"
        );
        self.shared.feed.send_replace(seq);
        self.shared.emit(Event::Ready);
        if let Some(rows_removed) = removed {
            tracing::warn!(
                rows_removed,
                resent = self.resent,
                seq,
                "downloaded the primary's data again (it could not go on from this device's position)"
            );
            self.shared.resync_done();
            self.shared.emit(Event::Resynced {
                resent: self.resent,
                rows_removed,
            });
        }
        self.restore_checkpoints()
    }

    pub(super) fn restore_checkpoints(&self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA wal_autocheckpoint=1000; PRAGMA wal_checkpoint(PASSIVE);")?;
        Ok(())
    }
}
