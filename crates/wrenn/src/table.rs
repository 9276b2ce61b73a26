//! Aligned text tables for the CLI's listings: each column as wide as its
//! widest cell, numbers right-aligned, the last column unpadded. Cells come
//! from the API (names, tags a tenant chose), so control characters are
//! shown escaped, never sent to the terminal as they are.

/// How a column's cells line up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table being filled, printed with [`Table::render`].
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: std::fmt::Display,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.columns.len())
            .map(|c| printable(&c.to_string()))
            .collect();
        row.resize(self.columns.len(), String::new());
        self.rows.push(row);
    }

    /// The table as lines of text, each ending in a newline.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (h, _))| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([h.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let last = i + 1 == row.len();
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                match self.columns[i].1 {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if !last {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table on stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// `s` with control characters (escape sequences, newlines, tabs) escaped.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("NAME", Align::Left),
            ("CPUS", Align::Right),
            ("TAGS", Align::Left),
        ]);
        t.row(["sb-1", "a-much-longer-name-than-the-header", "2", "gpu"]);
        t.row(["sb-22222", "b", "16", ""]);
        assert_eq!(
            t.render(),
            "ID        NAME                                CPUS  TAGS\n\
             sb-1      a-much-longer-name-than-the-header     2  gpu\n\
             sb-22222  b                                     16\n"
        );
    }

    #[test]
    fn control_characters_are_shown_escaped_and_rows_are_padded() {
        let mut t = Table::new(&[("NAME", Align::Left), ("N", Align::Right)]);
        t.row(["evil\u{1b}[2Jname\n"]);
        let out = t.render();
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert_eq!(out.lines().nth(1), Some("evil\\u{1b}[2Jname\\n"));
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn accented_characters_count_as_one_column() {
        let mut t = Table::new(&[("NAME", Align::Left), ("X", Align::Left)]);
        t.row(["héllo", "1"]);
        t.row(["h", "2"]);
        let out = t.render();
        let cols: Vec<usize> = out
            .lines()
            .map(|l| {
                l.chars()
                    .position(|c| c == '1' || c == '2' || c == 'X')
                    .unwrap()
            })
            .collect();
        assert!(cols.iter().all(|c| *c == cols[0]), "{out}");
    }
}
