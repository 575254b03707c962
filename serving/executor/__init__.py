"""Carries a DeploymentPlan out on live replicas: start and warm the new ones, switch the routing table, drain and
stop the old ones; replace a replica that dies. On CPU a replica's weights arrive by loading them again (there is no
GPU-to-GPU transfer to order), so a switch costs one model load per new replica."""

from serving.executor.diff import SwitchSteps, diff_plans
from serving.executor.executor import Executor, SwitchReport

__all__ = ["SwitchSteps", "diff_plans", "Executor", "SwitchReport"]
