//! A progress bar for a device's initial download, fed by the node's events.

use indicatif::{ProgressBar, ProgressStyle};
use octodb::{Connection, Event};
use std::io::IsTerminal;

/// Show download progress on standard error (when it is a terminal) until the node is ready.
pub fn show_download(conn: &Connection) {
    if conn.role() != Some(octodb::Role::Secondary) || !std::io::stderr().is_terminal() {
        return;
    }
    if conn.sync_status().map(|s| s.db_is_ready).unwrap_or(true) {
        return;
    }
    let mut events = conn.subscribe();
    std::thread::spawn(move || {
        let bar = ProgressBar::hidden();
        bar.set_style(
            ProgressStyle::with_template(
                "downloading {bar:40} {pos}/{len} rows ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        while let Ok(e) = events.blocking_recv() {
            match e {
                Event::Download { rows, total } => {
                    if bar.is_hidden() {
                        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    }
                    // (0: the primary is still counting them.)
                    if total > 0 {
                        bar.set_length(total);
                    }
                    bar.set_position(rows);
                }
                Event::Ready => break,
                _ => {}
            }
        }
        bar.finish_and_clear();
    });
}
