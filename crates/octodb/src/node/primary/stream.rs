//! Streaming the log to a device: where it goes on from (its position, the log's epochs and
//! compaction), the entries in order, and what a session hears of its own transactions.

use super::*;

/// The device a session streams to.
pub(super) struct Streamed {
    pub(super) node: u32,
    pub(super) user: i64,
    /// Where its copy stands (0: it needs the initial download).
    pub(super) last_seq: u64,
    /// It speaks protocol 5 or newer: it hears of the cluster's primaries.
    pub(super) tells_members: bool,
    /// It speaks protocol 7 or newer: it hears of the log's new epochs.
    pub(super) tells_epochs: bool,
    /// It speaks protocol 8 or newer: it hears the digests of its own decided transactions,
    /// and that its file is a copy of another device's.
    pub(super) tells_digests: bool,
    /// It speaks protocol 10 or newer: it hears when it has caught up.
    pub(super) tells_caught_up: bool,
    /// It speaks protocol 11 or newer: its download's row count follows the first rows.
    pub(super) counts_later: bool,
    /// It speaks protocol 13 or newer: its download brings the primaries' renames.
    pub(super) takes_renames: bool,
    /// The session reading its transactions (`copied_files`).
    pub(super) session: u64,
}

/// Where a device that applied the log up to `last_seq` (in epoch `epoch`) goes on from:
/// there, or from a new download (0) when this primary is behind it (`log::epochs`) or its
/// log no longer holds what follows that position (`log::compaction`). A
/// device of protocol 7 hears the log's epochs, and why it downloads again; an older one
/// cannot download over its data, and is refused (None) with what to do.
pub(super) async fn judge_position(
    shared: &Arc<Shared>,
    wr: &mut SecureWriter,
    tells_epochs: bool,
    (last_seq, epoch): (u64, Option<u64>),
    shape: Option<Box<LogShape>>,
) -> Result<Option<u64>> {
    let LogShape {
        end,
        history,
        start,
    } = match shape {
        Some(shape) => *shape,
        None => {
            let reader = shared.clone();
            shared.read(move |c| LogShape::read(&reader, c)).await?
        }
    };
    let behind = log::epochs::judge(&history, end, last_seq, epoch.filter(|_| tells_epochs))
        .or_else(|| past_compaction(last_seq, start, shared.cfg.log_keep));
    if !tells_epochs {
        let Some(reason) = behind else {
            return Ok(Some(last_seq));
        };
        let reason = format!(
            "{reason}. This device's app is too old to download again over its data: update \
             the app, or give the device a fresh file"
        );
        tracing::warn!("a device cannot go on from its position: {reason}");
        return crate::node::admission::refuse_session(wr, reason)
            .await
            .map(|()| None);
    }
    let epochs = match behind {
        Some(_) => history,
        None => log::epochs::from(&history, epoch),
    };
    if let Some(reason) = &behind {
        tracing::warn!("a device cannot go on from its position; it downloads again: {reason}");
    }
    let resync = behind.is_some();
    // Flushed with what follows it.
    let history = Message::LogHistory {
        epochs,
        resync: behind,
    };
    wr.send(&history.encode()).await?;
    Ok(Some(if resync { 0 } else { last_seq }))
}

/// What says where a device goes on from: the log's end, its epochs and its first entry.
pub(crate) struct LogShape {
    end: u64,
    history: Vec<log::epochs::Epoch>,
    start: u64,
}

impl LogShape {
    pub(crate) fn read(shared: &Shared, c: &rusqlite::Connection) -> Result<LogShape> {
        // The end before the history: an epoch begun since is then in it (`node::epoch`).
        let end = *shared.feed.borrow();
        Ok(LogShape {
            end,
            history: log::epochs::history(c)?,
            start: log::compaction::start(c)?,
        })
    }
}

/// Why a device at `last_seq` cannot catch up from a log that starts at `start` (cut to its
/// newest `keep` entries: `log::compaction`), if it cannot. (0: it downloads anyway.)
pub(super) fn past_compaction(last_seq: u64, start: u64, keep: u64) -> Option<String> {
    (last_seq > 0 && last_seq + 1 < start).then(|| {
        format!(
            "the primary's log no longer holds the entries after this device's position \
             {last_seq}: it keeps its newest {keep} (log_keep=) and starts at {start}, and this \
             device was away for longer"
        )
    })
}

/// Stream the log to a device from `last_seq` on (after its initial download when 0). Ends
/// when this primary stops leading its cluster: the device then finds the new leader.
pub(super) async fn stream_to_device(
    shared: &Arc<Shared>,
    device: Streamed,
    mut wr: SecureWriter,
    beats: &tokio::sync::Notify,
) -> Result<()> {
    let Streamed {
        node,
        user,
        last_seq,
        tells_members,
        tells_epochs,
        tells_digests,
        tells_caught_up,
        counts_later,
        takes_renames,
        session,
    } = device;
    let mut copied_files = shared.copied_files.subscribe();
    copied_files.mark_unchanged();
    let mut epoch_marks = shared.epoch_marks.subscribe();
    epoch_marks.mark_unchanged();
    let mut cluster = shared.cluster_view.subscribe();
    cluster.mark_unchanged();
    let mut following = shared.audiences.follow(user);
    let mut unwritten = shared.unwritten.subscribe();
    unwritten.mark_unchanged();
    let mut cursor = last_seq;
    if last_seq == 0 {
        // Boxed: the download's state is large and must not stay in every idle session.
        let download_of = snapshot::Download {
            user,
            total: match counts_later {
                true => snapshot::Total::Later,
                false => snapshot::Total::First,
            },
            renames: takes_renames,
        };
        cursor = Box::pin(download(shared, download_of, &mut wr)).await?;
    }
    // The device's position as it was last told. Entries it may not see are not sent one by
    // one; it hears of its new position with its next visible entry, or at the next position
    // tick (see `audiences`). A device that connects behind entries it may not see hears
    // its position once it has caught up: no tick may come while the log stands still.
    let mut told = cursor;
    let mut tell_position = true;
    let mut caught_up_untold = tells_caught_up;
    loop {
        following.mark_seen();
        let last = *shared.feed.borrow();
        // After the feed: an epoch whose marker the feed passed is seen here, and the device
        // hears of it before any entry after it.
        if tells_epochs && epoch_marks.has_changed().unwrap_or(false) {
            epoch_marks.mark_unchanged();
            let history = shared.read(log::epochs::history).await?;
            let newest = history.last().copied().into_iter().collect();
            send_now(
                &mut wr,
                &Message::LogHistory {
                    epochs: newest,
                    resync: None,
                },
            )
            .await?;
        }
        // Counted (metrics) while this session reads entries older than memory holds.
        let mut catching_up = None;
        while cursor < last {
            if shared.recent.none_for(cursor, last, node, user) {
                cursor = last;
                break;
            }
            let batch = match shared.recent.read_after(cursor, last, CATCH_UP_BATCH) {
                Some(b) => b,
                None => {
                    catching_up.get_or_insert_with(|| shared.metrics.catch_up());
                    let from = cursor;
                    let read = shared
                        .read(move |c| log::read_after(c, from, CATCH_UP_BATCH))
                        .await?;
                    // Cut while this session read it (`log::compaction`): the device hears
                    // why, and downloads again on its next connection.
                    if read.first().is_some_and(|e| e.seq != from + 1) {
                        let reason = past_compaction(from, read[0].seq, shared.cfg.log_keep)
                            .unwrap_or_else(|| {
                                "the primary's log was compacted past this \
                                                 device's position"
                                    .into()
                            });
                        wr.send(
                            &Message::Refused {
                                reason: reason.clone(),
                            }
                            .encode(),
                        )
                        .await?;
                        wr.flush().await?;
                        return Err(Error::rule(reason));
                    }
                    read.into_iter()
                        .map(|e| Arc::new(log::recent::Recorded::new(e)))
                        .collect()
                }
            };
            let Some(up_to) = batch.last().map(|e| e.seq()) else {
                cursor = last;
                break;
            };
            let visible: Vec<_> = batch
                .iter()
                .filter_map(|e| e.for_device(node, user))
                .collect();
            cursor = up_to;
            if !visible.is_empty() {
                tracing::trace!(node, up_to, "streaming entries");
                if tells_digests {
                    send_own_digests(&mut wr, &visible, node).await?;
                }
                let runs = wire_size::runs_within(visible, wire_size::STREAM_BUDGET, |e| {
                    wire_size::entry_bound(e)
                });
                let last_run = runs.len() - 1;
                for (i, run) in runs.into_iter().enumerate() {
                    // Each message's position: its last entry, the batch's end for the last.
                    let position = match run.last() {
                        Some(e) if i < last_run => e.seq,
                        _ => up_to,
                    };
                    send(&mut wr, run, position).await?;
                }
                told = up_to;
            }
        }
        drop(catching_up);
        if std::mem::take(&mut caught_up_untold) {
            // Once a session, where the log stood when the device had it all (its position
            // included, which it would otherwise hear below).
            wr.send(&Message::CaughtUp { up_to: cursor }.encode())
                .await?;
            wr.flush().await?;
            told = cursor;
        }
        if tell_position && told < cursor {
            send(&mut wr, Vec::new(), cursor).await?;
            told = cursor;
        }
        tell_position = loop {
            tokio::select! {
                wake = following.woken() => break wake == Wake::Position,
                // The device's heartbeat, answered: it proves to the device that the path
                // back works. Only devices send them unprompted, so an idle device costs one
                // message each way per its interval.
                () = beats.notified() => {
                    wr.send(&Message::Heartbeat.encode()).await?;
                    wr.flush().await?;
                }
                Ok(()) = cluster.changed() => {
                    let view = cluster.borrow_and_update().clone();
                    // A follower serves its devices too, during an election as well (their
                    // transactions wait for the new leader): only a primary whose Raft node
                    // stopped, or that is cut off from its majority, ends them.
                    if let Some(reason) = view.refusal() {
                        tracing::info!(node, "device disconnected: {reason}");
                        let told = match tells_members {
                            true => Message::NotLeader { leader: view.leader, reason: reason.clone() },
                            false => Message::Refused { reason: reason.clone() },
                        };
                        wr.send(&told.encode()).await?;
                        wr.flush().await?;
                        return Err(Error::rule(reason));
                    }
                    if tells_members {
                        wr.send(&Message::PrimaryMembers { members: view.members }.encode()).await?;
                        wr.flush().await?;
                    }
                }
                // This device sent other work under an id already decided.
                txn = copied_file(&mut copied_files, session) => {
                    let reason = Error::CopiedFile { txn }.to_string();
                    tracing::warn!(node, txn, "device disconnected: its file is a copy of another device's in use");
                    let told = match tells_digests {
                        true => Message::CopiedFile { txn, reason: reason.clone() },
                        false => Message::Refused { reason: reason.clone() },
                    };
                    wr.send(&told.encode()).await?;
                    wr.flush().await?;
                    return Err(Error::rule(reason));
                }
                // The writer could not write this device's transactions: the session ends,
                // telling the device why, and it sends them again when it reconnects.
                reason = transactions_unwritten(&mut unwritten, session) => {
                    tracing::info!(node, "device disconnected: {reason}");
                    wr.send(&Message::Refused { reason: reason.clone() }.encode()).await?;
                    wr.flush().await?;
                    return Err(Error::rule(reason));
                }
            }
        };
    }
}

/// What a device says of itself in its Hello's information, read once: the heartbeat
/// interval it names (the default if none) and the epoch of its log position (protocol 7).
pub(super) struct DeviceInfo {
    pub(super) heartbeat: Duration,
    pub(super) log_epoch: Option<u64>,
}

pub(super) fn device_info(info: &str) -> DeviceInfo {
    let v = serde_json::from_str::<serde_json::Value>(info).ok();
    let field = |name: &str| v.as_ref().and_then(|v| v.get(name)?.as_u64());
    DeviceInfo {
        heartbeat: field("heartbeat_s").map_or(crate::uri::DEFAULT_HEARTBEAT, |s| {
            Duration::from_secs(s.clamp(1, 60))
        }),
        log_epoch: field("log_epoch"),
    }
}

/// Protocol 8: before entries that decide some of `node`'s own transactions, the digest of
/// each as the deciding primary received it (entries a follower applied carry none).
pub(super) async fn send_own_digests(
    wr: &mut SecureWriter,
    entries: &[log::LogEntry],
    node: u32,
) -> Result<()> {
    let txns: Vec<(u64, [u8; 16])> = entries
        .iter()
        .filter(|e| e.origin_node == node)
        .filter_map(|e| Some((e.origin_txn, e.origin_digest?)))
        .collect();
    if txns.is_empty() {
        return Ok(());
    }
    wr.send(&Message::OwnDigests { txns }.encode()).await?;
    Ok(())
}

/// Until the writer finds that session `session`'s device sent other work under an id
/// already decided; then that id.
pub(super) async fn copied_file(
    found: &mut tokio::sync::watch::Receiver<std::collections::HashMap<u64, u64>>,
    session: u64,
) -> u64 {
    loop {
        if found.changed().await.is_err() {
            return std::future::pending().await;
        }
        let txn = found.borrow_and_update().get(&session).copied();
        if let Some(txn) = txn {
            return txn;
        }
    }
}

pub(super) async fn send(
    wr: &mut SecureWriter,
    entries: Vec<log::LogEntry>,
    up_to: u64,
) -> Result<()> {
    wr.send(&Message::Entries { entries, up_to }.encode())
        .await?;
    Ok(wr.flush().await?)
}
