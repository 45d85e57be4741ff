"""The use cases: requests and their answers, the policy checks, deploys and rollbacks, the
runner, the watch, halts, approvals, incidents and the five whys, recovery, status.

They speak the domain (answers are `Text`, people are `User`s) through the ports and the
store; they never import Slack, Redis or Docker."""
