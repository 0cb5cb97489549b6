"""`probe report`: one static HTML page per run or sweep, readable from disk years later."""
