//! Whether a database's applied migrations are the ones this build embeds:
//! a database migrated by a newer release, or one a migration never reached,
//! must not be served by this binary as if its schema were known.

/// One migration: its version and refinery's checksum of its name and SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationStamp {
    /// `V<n>`'s n.
    pub version: i64,
    /// Changes when the file's name or SQL changes.
    pub checksum: u64,
}

/// How the applied migrations differ from the embedded ones; empty lists
/// mean they match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationCheck {
    /// Embedded but not applied.
    pub missing: Vec<i64>,
    /// Applied but unknown to this build (a newer release migrated it).
    pub unknown: Vec<i64>,
    /// Applied from a file that has changed since.
    pub changed: Vec<i64>,
}

impl MigrationCheck {
    /// Compares what a database recorded with what this build embeds.
    pub fn compare(embedded: &[MigrationStamp], applied: &[MigrationStamp]) -> Self {
        let find = |list: &[MigrationStamp], version| list.iter().find(|m| m.version == version).copied();
        let mut check = Self::default();
        for m in embedded {
            match find(applied, m.version) {
                None => check.missing.push(m.version),
                Some(a) if a.checksum != m.checksum => check.changed.push(m.version),
                Some(_) => {}
            }
        }
        check.unknown = applied.iter().filter(|a| find(embedded, a.version).is_none()).map(|a| a.version).collect();
        check
    }

    /// Whether the database's schema is exactly the one this build expects.
    pub fn matches(&self) -> bool {
        self.missing.is_empty() && self.unknown.is_empty() && self.changed.is_empty()
    }
}

/// The stamps of refinery's migrations (what the binary embeds).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn embedded_stamps(migrations: &[refinery::Migration]) -> Vec<MigrationStamp> {
    migrations.iter().map(|m| MigrationStamp { version: i64::from(m.version()), checksum: m.checksum() }).collect()
}

/// refinery records checksums as decimal text; one that is not reads as 0,
/// which no file's checksum is taken to be, so it shows as changed.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn applied_stamp(version: i64, checksum: &str) -> MigrationStamp {
    MigrationStamp { version, checksum: checksum.parse().unwrap_or(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamps(list: &[(i64, u64)]) -> Vec<MigrationStamp> {
        list.iter().map(|&(version, checksum)| MigrationStamp { version, checksum }).collect()
    }

    #[test]
    fn names_each_kind_of_difference() {
        let embedded = stamps(&[(1, 11), (2, 22), (3, 33)]);
        assert!(MigrationCheck::compare(&embedded, &embedded).matches());
        let check = MigrationCheck::compare(&embedded, &stamps(&[(1, 11), (2, 99), (4, 44)]));
        assert_eq!(check, MigrationCheck { missing: vec![3], unknown: vec![4], changed: vec![2] });
        assert!(!check.matches());
    }
}
