//! Log output of the `glad` and `train` binaries, on stderr, shaped for where stderr goes:
//!
//! - a terminal: coloured, with timestamps (no colour when `NO_COLOR` is set and not empty);
//! - the systemd journal (`JOURNAL_STREAM` names stderr's device and inode, which systemd sets
//!   for a unit's output): every line starts with the sd-daemon priority prefix (`<3>` error,
//!   `<4>` warning, `<6>` info, `<7>` debug and trace), without ANSI codes or timestamps (the
//!   journal has its own), so `journalctl -u glad -p warning` shows warnings and errors only;
//! - anything else (a file, a pipe): plain text with timestamps, no escape codes.
//!
//! `GLAD_LOG_FORMAT` overrides the choice: `journal`, `plain`, `color` (still never with
//! `NO_COLOR`) or `auto` (the default). `RUST_LOG` sets the levels as before
//! (default `warn,glad_edge=info`).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Coloured text with timestamps.
    Color,
    /// Text with timestamps, no escape codes.
    Plain,
    /// sd-daemon `<N>` priority prefixes, no escape codes, no timestamps.
    Journal,
}

/// The facts the choice depends on (read from the process by [`LogEnv::current`]).
#[derive(Debug, Clone, Default)]
pub struct LogEnv {
    /// `GLAD_LOG_FORMAT`.
    pub format: Option<String>,
    /// `NO_COLOR` is set to a non-empty value.
    pub no_color: bool,
    /// stderr is a terminal.
    pub stderr_terminal: bool,
    /// `JOURNAL_STREAM` names stderr (`<device>:<inode>` of the stream systemd connected).
    pub stderr_is_journal: bool,
}

impl LogEnv {
    pub fn current() -> LogEnv {
        use std::io::IsTerminal;
        LogEnv {
            format: std::env::var("GLAD_LOG_FORMAT").ok().filter(|s| !s.is_empty()),
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            stderr_terminal: std::io::stderr().is_terminal(),
            stderr_is_journal: std::env::var("JOURNAL_STREAM").ok().is_some_and(|v| journal_stream_is_stderr(&v)),
        }
    }
}

/// Parses `JOURNAL_STREAM` (`<device>:<inode>`, both decimal).
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Whether `JOURNAL_STREAM`'s device and inode are those of this process's stderr (systemd's
/// rule: a child whose stderr was redirected elsewhere must not use the journal format).
fn journal_stream_is_stderr(value: &str) -> bool {
    let Some((dev, ino)) = parse_journal_stream(value) else { return false };
    // SAFETY: fstat on fd 2 with a zeroed stat buffer; an error leaves the result unused.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// The format for these facts (`GLAD_LOG_FORMAT` first, then the journal, then the terminal).
pub fn choose(env: &LogEnv) -> LogFormat {
    let colour_or_plain = |want_colour: bool| if want_colour && !env.no_color { LogFormat::Color } else { LogFormat::Plain };
    match env.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("journal") => LogFormat::Journal,
        Some("plain") => LogFormat::Plain,
        Some("color") | Some("colour") => colour_or_plain(true),
        _ if env.stderr_is_journal => LogFormat::Journal,
        _ => colour_or_plain(env.stderr_terminal),
    }
}

/// The sd-daemon priority of a level (syslog numbers: 3 err, 4 warning, 6 info, 7 debug).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Wraps a formatter: every line of an event gets the event's `<N>` prefix (journald reads
/// each line as its own entry).
struct Prefixed<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        let p = priority(event.metadata().level());
        for line in text.lines() {
            writeln!(writer, "<{p}>{line}")?;
        }
        Ok(())
    }
}

/// Installs the global subscriber for the binaries; returns the format chosen.
pub fn init() -> LogFormat {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,glad_edge=info".into());
    let format = choose(&LogEnv::current());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match format {
        LogFormat::Color => builder.with_ansi(true).init(),
        LogFormat::Plain => builder.with_ansi(false).init(),
        LogFormat::Journal => {
            let inner = tracing_subscriber::fmt::format().with_target(false).with_ansi(false).without_time();
            builder.with_ansi(false).event_format(Prefixed(inner)).init()
        }
    }
    format
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(format: Option<&str>, no_color: bool, terminal: bool, journal: bool) -> LogEnv {
        LogEnv { format: format.map(String::from), no_color, stderr_terminal: terminal, stderr_is_journal: journal }
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert_eq!(choose(&env(None, false, true, false)), LogFormat::Color);
        assert_eq!(choose(&env(None, true, true, false)), LogFormat::Plain);
        assert_eq!(choose(&env(None, false, false, false)), LogFormat::Plain);
        assert_eq!(choose(&env(Some("color"), true, false, false)), LogFormat::Plain);
        assert_eq!(choose(&env(Some("color"), false, false, false)), LogFormat::Color);
    }

    #[test]
    fn journal_when_stderr_is_the_journal_or_asked_for() {
        assert_eq!(choose(&env(None, false, false, true)), LogFormat::Journal);
        assert_eq!(choose(&env(None, false, true, true)), LogFormat::Journal);
        assert_eq!(choose(&env(Some("journal"), false, true, false)), LogFormat::Journal);
        assert_eq!(choose(&env(Some("plain"), false, false, true)), LogFormat::Plain);
        assert_eq!(choose(&env(Some("auto"), false, false, true)), LogFormat::Journal);
    }

    #[test]
    fn journal_stream_parses_device_and_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
