"""The report: plain-words findings and a page (HTML and Markdown) built only from metrics and pictures."""
