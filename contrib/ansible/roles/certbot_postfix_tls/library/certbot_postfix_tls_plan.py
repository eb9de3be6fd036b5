#!/usr/bin/python3
"""Ansible module of the certbot_postfix_tls role: `certbot-postfix-tls plan --json`,
whose diff becomes the task's diff (`--diff`) and whose verdict says whether
`certbot install` has work to do. It changes nothing on the host, so it runs in
check mode too."""

from __future__ import annotations

import json

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: certbot_postfix_tls_plan
short_description: What certbot install --installer postfix-tls would change
options:
  argv:
    description: the plan command, without --json
    type: list
    elements: str
    required: true
"""

RETURN = r"""
would_change: {description: the install has something to change, type: bool}
plan: {description: the plan's JSON object, type: dict}
"""


def summary(plan: dict) -> list[str]:
    """What the diffs do not show, as `certbot-postfix-tls plan` prints it."""
    lines = [f"key material ({k['action']}, content not shown): {k['path']} {k['mode']} "
             f"{k['owner']}" for k in plan["key_files"]]
    lines += [f"directory (create): {d['path']} {d['mode']}" for d in plan["directories"]]
    lines += [f"permissions: {p['path']}: {p['before']} -> {p['after']}"
              for p in plan["permissions"]]
    if plan["group"]:
        lines.append(f"group (create): {plan['group']}")
    if plan["reload"]:
        lines.append(f"reload: {', '.join(plan['reload'])}")
    lines += [f"verify: {v['service']} {v['label']} {v['address']}:{v['port']} ({v['tls']})"
              for v in plan["verify"]]
    return lines


def main() -> None:
    module = AnsibleModule(
        argument_spec={"argv": {"type": "list", "elements": "str", "required": True}},
        supports_check_mode=True,
    )
    rc, out, err = module.run_command([*module.params["argv"], "--json"])
    try:
        plan = json.loads(out)
    except ValueError:
        module.fail_json(msg=(err or out).strip() or f"certbot-postfix-tls plan exited {rc}",
                         rc=rc)
    if rc not in (0, 1):
        module.fail_json(msg=plan.get("refused") or (err or out).strip(), rc=rc, plan=plan)
    would_change = rc == 1
    prepared = "".join(f["diff"] for f in plan["files"])
    if would_change:
        prepared += "".join(line + "\n" for line in summary(plan))
    module.exit_json(changed=would_change, would_change=would_change, plan=plan,
                     diff={"prepared": prepared} if would_change else {})


if __name__ == "__main__":
    main()
