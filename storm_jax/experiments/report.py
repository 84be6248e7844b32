def build_report(out):
    return {"md": None, "html": None, "verdicts": []}
