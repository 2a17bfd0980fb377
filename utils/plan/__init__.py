"""The run plan: what a run is before it trains (precision, data, task, model) and its one memory model.

    from utils.plan import plan_run
    plan = plan_run(config, device)   # a RunPlan: see utils.plan.run_plan

memory (what each parameter and logit costs), stepper (the measured passes) and memory_model (MemoryModel,
measure_memory, check_memory) lie below run_plan; training, the inspection, the estimate and the wizard read them.
"""

from utils.plan.run_plan import DataPlan, RunPlan, plan_data, plan_run, training_device

__all__ = ["plan_run", "RunPlan", "plan_data", "DataPlan", "training_device"]
