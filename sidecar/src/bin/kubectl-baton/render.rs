//! kubectl's table layout and age format.

use k8s_openapi::jiff::Timestamp;

/// What a table shows for a missing value, as kubectl does.
pub const NONE: &str = "<none>";

/// Rows of cells printed in aligned columns like kubectl's (Go's
/// text/tabwriter with padding 3 and minimum width 6): every column but the
/// last is padded to its widest cell plus 3 spaces, no line has trailing
/// spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

const PADDING: usize = 3;
const MIN_WIDTH: usize = 6;

impl Table {
    pub fn new<'a>(header: impl IntoIterator<Item = &'a str>) -> Self {
        Table {
            rows: vec![header.into_iter().map(str::to_owned).collect()],
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        // One line per row: a newline or tab in a cell (a reason written by
        // hand, say) would break the columns.
        let row = row
            .into_iter()
            .map(|cell| {
                if cell.contains(char::is_control) {
                    cell.replace(char::is_control, " ")
                } else {
                    cell
                }
            })
            .collect();
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                let widest = self
                    .rows
                    .iter()
                    .filter_map(|row| row.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0);
                (widest + PADDING).max(MIN_WIDTH)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    let pad = widths[c].saturating_sub(cell.chars().count());
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The age of `then` at `now` as kubectl prints it (apimachinery's
/// `duration.HumanDuration`): `5s`, `3m12s`, `4h`, `2d`; `<unknown>` when
/// there is no time.
pub fn age(then: Option<Timestamp>, now: Timestamp) -> String {
    let Some(then) = then else {
        return "<unknown>".to_owned();
    };
    let millis = now.as_millisecond() - then.as_millisecond();
    // Go's int(d.Seconds()) truncates toward zero.
    human_duration(millis / 1000)
}

/// apimachinery's `duration.HumanDuration` of a whole number of seconds.
fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        // A clock ahead of ours by more than the 2 s kubectl tolerates.
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_by_three_to_the_widest_cell_and_the_last_is_not() {
        let mut table = Table::new(["GROUP", "HOLDER", "PODS"]);
        table.push(vec!["web".into(), "web-0".into(), "2/2".into()]);
        table.push(vec!["payments".into(), NONE.into(), "0/3".into()]);
        assert_eq!(
            table.render(),
            "\
GROUP      HOLDER   PODS
web        web-0    2/2
payments   <none>   0/3
"
        );
    }

    #[test]
    fn a_narrow_column_is_still_six_wide_and_lines_have_no_trailing_spaces() {
        let mut table = Table::new(["A", "B"]);
        table.push(vec!["1".into(), String::new()]);
        assert_eq!(table.render(), "A     B\n1\n");
    }

    #[test]
    fn a_cell_with_a_newline_stays_on_its_line() {
        let mut table = Table::new(["REASON"]);
        table.push(vec!["probe failed:\nconnection refused".into()]);
        assert_eq!(table.render(), "REASON\nprobe failed: connection refused\n");
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (seconds, expected) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (4 * 3600, "4h"),
            (4 * 3600 + 30 * 60, "4h30m"),
            (8 * 3600, "8h"),
            (47 * 3600 + 59 * 60, "47h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (8 * 24 * 3600, "8d"),
            (2 * 365 * 24 * 3600, "2y"),
            (2 * 365 * 24 * 3600 + 3 * 24 * 3600, "2y3d"),
            (9 * 365 * 24 * 3600, "9y"),
        ] {
            assert_eq!(human_duration(seconds), expected, "{seconds}s");
        }
    }

    #[test]
    fn an_age_counts_whole_seconds_from_then_to_now() {
        let now: Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        let then: Timestamp = "2025-01-01T11:56:47.900Z".parse().unwrap();
        assert_eq!(age(Some(then), now), "3m12s");
        assert_eq!(age(None, now), "<unknown>");
    }
}
