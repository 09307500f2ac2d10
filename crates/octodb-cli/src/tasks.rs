//! `octodb tasks URI`: the signed task queue's tasks as a node's file holds them, with state,
//! progress bars, attempts and reasons. Reads the file beside a running node (a read-only
//! connection of its own, as `backup` does), so it works on a live primary or device.

use crate::TasksArgs;
use anyhow::{bail, Context};
use octodb_tasks::{TaskInfo, TaskQueue};
use std::process::ExitCode;

/// Width of a progress bar, in characters.
const BAR: usize = 20;

pub fn run(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let cfg = octodb::NodeConfig::parse(&crate::normalize_uri(&args.uri)).with_context(|| {
        format!(
            "reading the URI `{}`",
            octodb::NodeConfig::redacted(&args.uri)
        )
    })?;
    if !cfg.path.exists() {
        bail!("there is no database at `{}`", cfg.path.display());
    }
    let read_only = octodb::OpenOptions {
        uri: false,
        busy_timeout: std::time::Duration::from_secs(30),
    };
    let conn = octodb::Connection::open_file(&cfg, &read_only)
        .with_context(|| format!("opening `{}` to read it", cfg.path.display()))?;
    let queue = TaskQueue::new(conn);
    let tasks = match queue.list() {
        Ok(tasks) => tasks,
        Err(octodb_tasks::TaskError::Db(e)) if e.to_string().contains("no such table") => {
            eprintln!("octodb: no task queue in `{}` yet", cfg.path.display());
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e).context("reading the tasks"),
    };
    if args.json {
        let rows: Vec<serde_json::Value> = tasks.iter().map(json).collect();
        println!("{}", serde_json::Value::from(rows));
    } else {
        print!("{}", table(&tasks));
    }
    Ok(ExitCode::SUCCESS)
}

fn json(t: &TaskInfo) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "type": t.task_type,
        "state": t.state.as_str(),
        "progress": t.progress.progress,
        "total": t.progress.total,
        "expected_duration": t.progress.expected_duration,
        "attempts": t.attempts,
        "reason": t.reason,
        "error_type": t.error_type,
        "error_message": t.error_message,
        "created_at_ms": t.created_at_ms,
        "started_at_ms": t.started_at_ms,
        "ended_at_ms": t.ended_at_ms,
        "submitter": t.submitter,
    })
}

/// `[#########-----------]  45%`, or blanks when the task reported no progress.
pub fn bar(progress: Option<f64>, total: Option<f64>) -> String {
    let (Some(p), Some(t)) = (progress, total) else {
        return " ".repeat(BAR + 7);
    };
    let fraction = if t > 0.0 {
        (p / t).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = (fraction * BAR as f64).round() as usize;
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        "-".repeat(BAR - filled),
        (fraction * 100.0).round() as u32
    )
}

fn table(tasks: &[TaskInfo]) -> String {
    let mut out = format!(
        "{:<20} {:<16} {:<9} {:<27} {:>8}  {}\n",
        "id", "type", "state", "progress", "attempts", "reason / error"
    );
    for t in tasks {
        let why = match (&t.reason, &t.error_type, &t.error_message) {
            (Some(reason), _, Some(detail)) => format!("{reason}: {detail}"),
            (Some(reason), _, None) => reason.clone(),
            (None, Some(kind), Some(message)) => format!("{kind}: {message}"),
            _ if t.cancel_requested && !t.state.has_ended() => "cancel requested".into(),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<20} {:<16} {:<9} {:<27} {:>8}  {}\n",
            t.id,
            t.task_type,
            t.state.as_str(),
            bar(t.progress.progress, t.progress.total),
            t.attempts,
            crate::output::one_line(&why)
        ));
    }
    out.push_str(&format!("({} tasks)\n", tasks.len()));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_bars_are_bounded() {
        assert_eq!(
            super::bar(Some(5.0), Some(10.0)),
            "[##########----------]  50%"
        );
        assert_eq!(
            super::bar(Some(20.0), Some(10.0)),
            "[####################] 100%"
        );
        assert_eq!(
            super::bar(Some(1.0), Some(0.0)),
            "[--------------------]   0%"
        );
        assert_eq!(super::bar(None, None).len(), 27);
    }
}
