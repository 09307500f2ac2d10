//! A device's initial download, read on a blocking thread and sent as its parts arrive, with
//! its row count beside it.

use super::*;

/// The initial download: the snapshot is read and encoded on a blocking thread and sent from
/// here as its parts arrive. Returns the log position it stands at. With `counts_later` (a
/// device of protocol 11) the rows are counted on another reader meanwhile, and the count
/// follows the first rows (`Message::SnapshotTotal`, before `SnapshotEnd`) rather than
/// holding them up.
pub(super) async fn download(
    shared: &Arc<Shared>,
    of: snapshot::Download,
    wr: &mut SecureWriter,
) -> Result<u64> {
    let _serving = shared.metrics.download_served();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let (user, counts_later) = (of.user, of.total == snapshot::Total::Later);
    let reading = shared.read(move |c| snapshot::read(c, of, &tx));
    let sending = async {
        // Owned here so that a failed send drops it, which stops the reading side too.
        let mut rx = rx;
        // The count, begun once `SnapshotBegin` has gone.
        let mut count: Option<tokio::sync::oneshot::Receiver<Result<u64>>> = None;
        let mut counted = !counts_later;
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { break };
                    wr.send(&m).await?;
                    if !counted && count.is_none() {
                        count = Some(count_beside(shared, user));
                    }
                    if rx.is_empty() {
                        wr.flush().await?;
                    }
                }
                n = async {
                    match count.as_mut() {
                        Some(c) => Some(c.await),
                        None => None,
                    }
                }, if !counted && count.is_some() => {
                    counted = true;
                    send_total(wr, n).await?;
                }
            }
        }
        if !counted {
            if let Some(count) = count {
                send_total(wr, Some(count.await)).await?;
            }
        }
        Ok::<(), Error>(())
    };
    let (seq, sent) = tokio::join!(reading, sending);
    sent?;
    let seq = seq?;
    wr.send(&Message::SnapshotEnd { seq }.encode()).await?;
    wr.flush().await?;
    Ok(seq)
}

/// Counts the rows of a download for `user` on a reader of its own; the count arrives on the
/// channel returned.
pub(super) fn count_beside(
    shared: &Arc<Shared>,
    user: i64,
) -> tokio::sync::oneshot::Receiver<Result<u64>> {
    let (counted, count) = tokio::sync::oneshot::channel();
    let shared = shared.clone();
    tokio::spawn(async move {
        let _ = counted.send(shared.read(move |c| snapshot::count(c, user)).await);
    });
    count
}

/// Sends a download's row count (a count that failed leaves the device's progress without a
/// total: said at debug).
pub(super) async fn send_total(
    wr: &mut SecureWriter,
    n: Option<std::result::Result<Result<u64>, tokio::sync::oneshot::error::RecvError>>,
) -> Result<()> {
    match n {
        Some(Ok(Ok(total_rows))) => {
            wr.send(&Message::SnapshotTotal { total_rows }.encode())
                .await?
        }
        Some(Ok(Err(e))) => tracing::debug!("a download's rows could not be counted: {e}"),
        _ => tracing::debug!("a download's rows could not be counted"),
    }
    Ok(())
}
