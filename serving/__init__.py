"""OServe: workload-aware heterogeneous LLM serving deployments (cost model, scheduler, simulator), and the mechanism
that runs its plans on real engines (engines/, router/, executor/, loadgen).

Policy code here is pure: it never imports vllm, ray, deepspeed or anything under `training`. Only the mechanism
packages engines/, router/ and executor/ import vllm and ray, lazily, so `import serving` loads neither.
"""
