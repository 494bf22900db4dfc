"""The worker's two stages, each a Faust agent over batches of events.

    ad-requests (key: user) --route--> requests-by-campaign (key: campaign) --decide--> ad-served
                     |                         campaigns (key: campaign) --^       \\-> ad-denied
                     \\--> ad-requests-dlq

`route` validates and de-duplicates, on state keyed like the users' partitions. `decide`
owns everything per campaign: its rules, its budget, and the frequency caps of its users, so
a cap and a budget are checked and charged in one place, in one transaction.
"""
