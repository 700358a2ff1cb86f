"""The Meta-World Table-1 benchmark (benchmarks/metaworld_table1.py is its command line), one module per job.

  config          Table1Config and its YAML file
  methods         the method table (MethodSpec) and each method's clients and ServerApp run config
  layout          where a run's files live under the work folder; JSON read/written atomically
  runtime         the stop flag, the command's time budget, the log line
  recording       phase record: scripted-expert demonstrations
  language_cache  instruction embeddings computed once for every process
  deployment      phase train: one loopback federation per method
  snapshots       what evaluation needs of a round, copied aside while the run goes on
  evaluation      phase eval: held-out rollouts in one process pool
  paper           the paper's numbers and the targets
  results         the result JSON (per-method rows, expert usage, targets)
  plots, markdown the figures and RESULTS.md from the JSON
  report          phase report: writes the three
"""
