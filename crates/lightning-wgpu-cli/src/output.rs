//! Writing a command's output files so that nothing is lost: no two
//! outputs on one path, no output over an input, and every file written to
//! a temporary beside it and renamed into place only once all are written
//! (a failure leaves neither a partial file nor some of the outputs).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// A path as it will be opened: made absolute, with `.` and `..` and links
/// of its folder resolved where the folder exists.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir.canonicalize().map(|d| d.join(name)).unwrap_or(absolute),
        _ => absolute,
    }
}

/// The outputs of one command.
pub struct Outputs {
    /// (option, where it goes, its temporary).
    files: Vec<(&'static str, PathBuf, PathBuf)>,
    committed: bool,
}

impl Outputs {
    /// Checks `outputs` (option, path) against each other and against the
    /// command's `inputs`, before any work is done.
    pub fn new(
        outputs: &[(&'static str, &Path)],
        inputs: &[(&'static str, &Path)],
    ) -> Result<Outputs> {
        let mut files: Vec<(&'static str, PathBuf, PathBuf)> = Vec::new();
        for &(option, path) in outputs {
            let at = resolved(path);
            if let Some((other, _, _)) = files.iter().find(|(_, p, _)| *p == at) {
                bail!(
                    "--{other} and --{option} both write {}: give each output its own file",
                    path.display()
                );
            }
            if let Some((input, _)) = inputs.iter().find(|(_, p)| resolved(p) == at) {
                bail!(
                    "--{option} would overwrite the input --{input} ({}): write outputs elsewhere",
                    path.display()
                );
            }
            let name = at
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let temporary = at.with_file_name(format!(".{name}.partial-{}", std::process::id()));
            files.push((option, at, temporary));
        }
        Ok(Outputs {
            files,
            committed: false,
        })
    }

    /// The temporary file to write output `option` to.
    pub fn temporary(&self, option: &str) -> &Path {
        self.files
            .iter()
            .find(|(o, _, _)| *o == option)
            .map(|(_, _, t)| t.as_path())
            .unwrap_or_else(|| panic!("--{option} is not an output of this command"))
    }

    /// Moves every written output into place.
    pub fn commit(mut self) -> Result<()> {
        for (option, path, temporary) in &self.files {
            std::fs::rename(temporary, path).with_context(|| {
                format!(
                    "cannot move the --{option} output into place at {}",
                    path.display()
                )
            })?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if !self.committed {
            for (_, _, temporary) in &self.files {
                let _ = std::fs::remove_file(temporary);
            }
        }
    }
}
