// cowbd's version, in one place: `cowbd --version` prints it, and tools/package reads it from
// the built binary for the Debian package's version and the man pages.

/// The release version (`MAJOR.MINOR.PATCH`). Raise it in the commit that changes what a
/// release ships; the store format has its own version field (docs/FORMAT.md, "Versioning").
let cowbdVersion = "0.1.0"
