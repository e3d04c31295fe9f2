"""PDF copy of the report, printed by headless Chromium when one is installed.

Why Chromium: it renders the same HTML the clinician opens, so the PDF cannot differ from the page; no
second layout engine (and no LaTeX) is needed. Without a renderer the HTML report stands alone.
"""
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_renderer():
    """Path of a Chromium binary: ``DLMREG_CHROMIUM`` if set, else the first candidate on PATH, else None.

    ``DLMREG_REPORT_PDF=off`` turns the PDF off (None), e.g. where many runs need no PDF.
    """
    if os.environ.get("DLMREG_REPORT_PDF", "auto").lower() == "off":
        return None
    configured = os.environ.get("DLMREG_CHROMIUM")
    if configured:
        return configured if shutil.which(configured) else None
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def render_pdf(html_path, pdf_path, renderer=None, timeout=120):
    """Print ``html_path`` to ``pdf_path`` (A4, no header/footer).

    Parameters
    ----------
    html_path, pdf_path : pathlib.Path
    renderer : str, optional
        Chromium binary (default :func:`find_renderer`).
    timeout : float
        Seconds before the renderer is stopped.

    Returns
    -------
    pathlib.Path or None
        ``pdf_path``; None when no renderer is installed or it failed (the reason is logged as a
        warning, the HTML report is unaffected).
    """
    renderer = renderer or find_renderer()
    if renderer is None:
        log.info("report.pdf not written: no Chromium found or DLMREG_REPORT_PDF=off")
        return None
    pdf_path = Path(pdf_path)
    with tempfile.TemporaryDirectory(prefix="dlmreg-chromium-") as profile:
        # The page is our own, script-free file; --no-sandbox lets Chromium start as root in containers.
        command = [renderer, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", "--no-pdf-header-footer", f"--print-to-pdf={pdf_path}",
                   Path(html_path).resolve().as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("report.pdf not written: %s", error)
            return None
    if done.returncode != 0 or not pdf_path.exists():
        log.warning("report.pdf not written: Chromium exited with %s", done.returncode)
        return None
    return pdf_path
