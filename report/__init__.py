"""The run report, <run>/report.html: one self-contained page (inline CSS and SVG, no scripts, no network).

    from report.html import write_report
    write_report(run_dir)   # after training, after eval.py, and by the publisher (which uploads it)
"""
