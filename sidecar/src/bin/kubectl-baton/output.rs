//! Writing to stdout.

use std::io::Write;

/// Prints `text` to stdout. A reader that went away (`| head`) ends the
/// output quietly, as it does for kubectl, rather than in a panic.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

/// Prints one line to stdout.
pub fn line(text: impl std::fmt::Display) -> anyhow::Result<()> {
    print(&format!("{text}\n"))
}
