"""OServe: workload-aware heterogeneous LLM serving deployments (cost model, scheduler, simulator).

Policy code here is pure: it never imports vllm, ray, deepspeed or anything under `training`.
"""
