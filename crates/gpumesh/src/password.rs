//! Where a keystore's password comes from: a file named on the command line, the
//! `GPUMESH_PASSWORD` environment variable (set, even empty), or a prompt on the terminal,
//! in that order. A command with none of them and no terminal fails with a message that
//! names them, rather than waiting for input that never comes.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, bail};

/// The environment variable that holds a password.
pub const PASSWORD_ENV: &str = "GPUMESH_PASSWORD";

/// The password for `what` (for example "key file buyer.key"). With `confirm`, a
/// password typed at the prompt is asked for twice.
pub fn get(what: &str, file: Option<&Path>, confirm: bool) -> anyhow::Result<String> {
    if let Some(file) = file {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(file)
                && meta.permissions().mode() & 0o007 != 0
            {
                eprintln!(
                    "warning: the password file {} is readable by every user; chmod o-rwx it",
                    file.display()
                );
            }
        }
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("failed to read the password file {}", file.display()))?;
        // One trailing line ending is the file's, not the password's.
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        return Ok(text.to_string());
    }
    if let Some(value) = std::env::var_os(PASSWORD_ENV) {
        return value
            .into_string()
            .map_err(|_| anyhow::anyhow!("{PASSWORD_ENV} is not valid UTF-8"));
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "{what} needs a password: give --password-file FILE or set {PASSWORD_ENV} (there is no terminal to ask on)"
        );
    }
    let password = rpassword::prompt_password(format!("password for {what}: "))
        .context("failed to read the password")?;
    if confirm {
        let again = rpassword::prompt_password("the same password again: ")
            .context("failed to read the password")?;
        if again != password {
            bail!("the two passwords differ; nothing was written");
        }
    }
    Ok(password)
}
