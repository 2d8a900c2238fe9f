//! Running a job on a pseudo-terminal, as a person at a terminal would, and
//! reading back the screen they would see.
//!
//! The jobs draw progress only when stderr is a terminal, so whether a progress
//! bar and a log line can end up on one line is only visible on a real one.
//! util-linux's `script` (Debian's essential `bsdutils`) gives the command a
//! pty; [`screen`] replays what was written the way a terminal does.

use std::process::{Command, Output};

/// Runs `program args…` on a pseudo-terminal with exactly `env` (plus `TERM`),
/// and returns what the terminal received (stdout and stderr merged, as on a
/// screen) in `Output::stdout`, and the program's exit status.
pub fn run_on_terminal(
    program: &str,
    args: &[&str],
    env: &[(String, String)],
) -> std::io::Result<Output> {
    let line = std::iter::once(program)
        .chain(args.iter().copied())
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ");
    Command::new("script")
        .args([
            "--quiet",
            "--flush",
            "--return",
            "--command",
            &line,
            "/dev/null",
        ])
        .env_clear()
        .envs(env.iter().cloned())
        .env("TERM", "xterm")
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .output()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The lines left on the screen after replaying `bytes` as a terminal does:
/// `\r` returns to the line's start, `\n` starts a new line, `ESC[2K` / `ESC[K`
/// clear, `ESC[nA` moves up; text overwrites what is under the cursor; other
/// escape sequences (colours, cursor visibility) are dropped.
pub fn screen(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                col = 0;
                if row == lines.len() {
                    lines.push(Vec::new());
                }
            }
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    chars.next();
                    continue;
                }
                chars.next();
                let mut params = String::new();
                let mut last = None;
                for p in chars.by_ref() {
                    if p.is_ascii_alphabetic() || p == '~' {
                        last = Some(p);
                        break;
                    }
                    params.push(p);
                }
                let n: usize = params.trim_start_matches('?').parse().unwrap_or(0);
                match last {
                    Some('K') if n == 2 => lines[row].clear(),
                    Some('K') => lines[row].truncate(col),
                    Some('A') => row = row.saturating_sub(n.max(1)),
                    Some('G') => col = n.saturating_sub(1),
                    Some('J') => {
                        lines.truncate(row + 1);
                        lines[row].truncate(col);
                    }
                    _ => {}
                }
            }
            c if c.is_control() => {}
            c => {
                let line = &mut lines[row];
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.resize(col, ' ');
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    lines
        .into_iter()
        .map(|l| l.into_iter().collect::<String>().trim_end().to_owned())
        .collect()
}

/// Checks what a person saw of a progress bar whose text starts with `label`
/// (`label: <count> <unit> (<rate>/s, <elapsed>)`): it was drawn at least once;
/// no line left on the screen holds both the bar and a log line (a log level
/// word) or two bars; every rate drawn is a whole number. Returns how many
/// times the bar was drawn, or what was wrong.
pub fn check_progress(raw: &[u8], label: &str) -> Result<usize, String> {
    let text = String::from_utf8_lossy(raw);
    let marker = format!("{label}: ");
    let draws: Vec<&str> = text.split(&marker).skip(1).collect();
    if draws.is_empty() {
        return Err(format!(
            "the progress bar {label:?} was never drawn:\n{text}"
        ));
    }
    for d in &draws {
        let Some(open) = d.find(" (") else { continue };
        let rate = d[open + 2..].split("/s").next().unwrap_or_default();
        if !rate.chars().all(|c| c.is_ascii_digit() || c == ',') {
            return Err(format!(
                "a rate is not rounded: {label}: {}",
                &d[..d.len().min(80)]
            ));
        }
    }
    for line in screen(raw) {
        let bars = line.matches(&marker).count();
        let logged = [" INFO ", " DEBUG ", " WARN ", " ERROR "]
            .iter()
            .any(|level| line.contains(level));
        if bars > 1 || (bars == 1 && logged) {
            return Err(format!("a progress bar shares a line: {line}"));
        }
    }
    Ok(draws.len())
}

#[cfg(test)]
mod tests {
    use super::{check_progress, screen};

    #[test]
    fn progress_sharing_a_line_with_a_log_line_is_caught() {
        let kept_apart = b"\r\x1b[2Kt: 4,096 rows (1,000/s, 1s)\r\x1b[2K2026 DEBUG Wrote file\nt: 8,192 rows (2,000/s, 2s)\r\x1b[2K";
        assert_eq!(check_progress(kept_apart, "t"), Ok(2));
        let shared = b"t: 4,096 rows (1,000/s, 1s)2026 DEBUG Wrote file\n";
        assert!(check_progress(shared, "t").is_err());
        let unrounded = b"t: 4,096 rows (1,000.5123/s, 1s)\r\x1b[2K";
        assert!(check_progress(unrounded, "t").is_err());
        assert!(check_progress(b"nothing\n", "t").is_err());
    }

    #[test]
    fn a_redrawn_line_keeps_only_its_last_text() {
        let s =
            screen(b"\r\x1b[2Kspinner 10 rows\r\x1b[2Kspinner 20 rows\r\x1b[2KINFO line\nnext\n");
        assert_eq!(s, ["INFO line", "next", ""]);
    }

    #[test]
    fn a_line_written_after_a_bar_without_clearing_it_shares_its_line() {
        let s = screen(b"spinner 10 rows\x1b[32mINFO\x1b[0m line\n");
        assert_eq!(s, ["spinner 10 rowsINFO line", ""]);
    }

    #[test]
    fn cursor_up_and_clear_below_redraw_a_multi_line_block() {
        let s = screen(b"a\nb\x1b[1A\r\x1b[Jc\n");
        assert_eq!(s, ["c", ""]);
    }
}
