"""HTML reports: a batch's history as one self-contained page (``runner report``).

    data     what the page shows, gathered read-only through the analysis readers
    page     the HTML: style, uPlot, the page script and the data, all inlined
    files    building a report, writing it atomically, schedules' ``--report`` paths
    serve    ``runner report --serve``: the live page on 127.0.0.1, read-only

uPlot and numpy are only read when a report is built.
"""
